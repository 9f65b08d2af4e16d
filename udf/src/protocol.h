/*
 * protocol.h: Gearman's binary protocol (protocol.c): every packet type the library sends
 * or reads, listed once, and the framing, parsing and encoding done from that list.
 */
#ifndef GMU_PROTOCOL_H
#define GMU_PROTOCOL_H

#include "conn.h"

/*
 * Every packet type the library speaks, once: X(name, number, arguments, data). A packet's
 * body is its arguments separated by NUL bytes; with data, the last one is opaque bytes
 * that may hold NULs (a workload, a result). As libgearman's command.cc lists them.
 */
#define GEARMAN_PACKETS(X)                                                               \
  X(SUBMIT_JOB, 7, 3, true)          /* function, unique, workload */                    \
  X(JOB_CREATED, 8, 1, false)        /* handle */                                        \
  X(WORK_STATUS, 12, 3, false)       /* handle, numerator, denominator */                \
  X(WORK_COMPLETE, 13, 2, true)      /* handle, result */                                \
  X(WORK_FAIL, 14, 1, false)         /* handle */                                        \
  X(SUBMIT_JOB_BG, 18, 3, true)                                                          \
  X(ERROR_PACKET, 19, 2, false)      /* code, text */                                    \
  X(SUBMIT_JOB_HIGH, 21, 3, true)                                                        \
  X(WORK_EXCEPTION, 25, 2, true)     /* handle, exception */                             \
  X(WORK_DATA, 28, 2, true)          /* handle, part of the result */                    \
  X(WORK_WARNING, 29, 2, true)       /* handle, warning */                               \
  X(SUBMIT_JOB_HIGH_BG, 32, 3, true)                                                     \
  X(SUBMIT_JOB_LOW, 33, 3, true)                                                         \
  X(SUBMIT_JOB_LOW_BG, 34, 3, true)                                                      \
  X(SUBMIT_JOB_EPOCH, 36, 4, true)   /* function, unique, unix time, workload */

#define PACKET_ENUM(name, number, nargs, data) name = number,
enum packet_type { GEARMAN_PACKETS(PACKET_ENUM) };
#undef PACKET_ENUM

#define HEADER_SIZE 12
#define MAX_ARGS 4 /* the most arguments a packet of the table has */

struct packet {
  uint32_t type;
  const char *body; /* valid until the next read on the connection */
  size_t size;
};

/* A packet's arguments, split as the table says. */
struct packet_args {
  unsigned n;
  const char *arg[MAX_ARGS];
  size_t len[MAX_ARGS];
};

/* The packet type's name ("WORK_FAIL"), or NULL if the table has no such type. */
const char *packet_name(uint32_t type);

/* p's arguments, split as the table says; false if the type is not in the table or the body
 * has too few of them. */
bool packet_split(const struct packet *p, struct packet_args *out);

/* The text of an ERROR packet, shown for a log line (echo has 41 bytes). */
const char *packet_error_text(const struct packet *p, char *echo);

/*
 * The response at the start of buf[0, n): 1 and *p when it is there whole, 0 when more
 * bytes are needed (*p has its header), -1 if it is no response or over max bytes.
 */
int packet_frame(const char *buf, size_t n, size_t max, struct packet *p);

/* The next response packet from c. */
enum io conn_read(struct conn *c, struct packet *p, int64_t deadline);

/*
 * Send a request of `type` on c: its arguments args[0..n) (the last is the data when the
 * table says so), straight from the caller's buffers.
 */
enum io packet_send(struct conn *c, uint32_t type, const struct packet_args *args,
                    int64_t deadline);
/* The same request appended to c's output buffer, to be sent later (ship.c). */
enum io packet_append(struct conn *c, uint32_t type, const struct packet_args *args);

#endif
