/*
 * protocol.h: Gearman's binary protocol (protocol.c): packet types and framing.
 */
#ifndef GMU_PROTOCOL_H
#define GMU_PROTOCOL_H

#include "conn.h"

/* Gearman's packet types, as numbered by the protocol. */
enum {
  SUBMIT_JOB = 7, JOB_CREATED = 8, WORK_STATUS = 12, WORK_COMPLETE = 13, WORK_FAIL = 14,
  SUBMIT_JOB_BG = 18, ERROR_PACKET = 19, SUBMIT_JOB_HIGH = 21, WORK_EXCEPTION = 25,
  WORK_DATA = 28, WORK_WARNING = 29, SUBMIT_JOB_HIGH_BG = 32, SUBMIT_JOB_LOW = 33,
  SUBMIT_JOB_LOW_BG = 34, SUBMIT_JOB_EPOCH = 36,
};
#define HEADER_SIZE 12

struct packet {
  uint32_t type;
  const char *body; /* valid until the next read on the connection */
  size_t size;
};

uint32_t get_be32(const char *p);
void put_be32(char *p, uint32_t v);
/* The next response packet from c. */
enum io conn_read(struct conn *c, struct packet *p, int64_t deadline);

#endif
