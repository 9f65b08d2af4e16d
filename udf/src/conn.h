/*
 * conn.h: connections to gearmand (conn.c): each mysqld thread keeps one per server and
 * reuses it for every row and statement; it is dropped after a failure and after a config
 * change. Every wait on them ends at the call's deadline.
 */
#ifndef GMU_CONN_H
#define GMU_CONN_H

#include "config_state.h"

#include <pthread.h>
#include <sys/uio.h>

#define IN_BUFFER_MIN 65536        /* a connection's first receive buffer */
#define IN_BUFFER_KEEP (1 << 20)   /* a larger one, grown for a big result, is freed after */
#define TOKEN_BYTES 16             /* a ledger token's randomness: 128 bits (token.c) */
#define TOKEN_HEX (2 * TOKEN_BYTES)
#define TOKEN_POOL (32 * TOKEN_BYTES) /* random bytes read at once: one getrandom() a 32 */

/* What one socket operation came to. */
enum io { IO_OK, IO_TIMEOUT, IO_LOST, IO_PROTOCOL, IO_NO_MEMORY };

/* One connection to one server; received bytes wait in in[in_start, in_end), and gman_ship's
 * requests not sent yet in out[0, out_len) (ship.c). */
struct conn {
  int fd; /* -1 when closed */
  char *in;
  size_t in_start, in_end, in_cap;
  unsigned owed; /* acknowledgements of gman_ship jobs gearmand has still to send */
  char *out;
  size_t out_len, out_cap;
  int64_t out_since; /* now_ms() when out last became non-empty */
};

struct thread_state {
  struct thread_state *prev, *next; /* registry links, guarded by conn.c's g_registry_lock */
  uint64_t generation;              /* of the config snapshot below */
  struct config config;
  struct conn conns[MAX_SLOTS];  /* one per slot of config */
  /* ship_lock guards ships[]: this thread's gman_ship calls and the flusher (ship.c) both
   * use them. Nothing else of the state is the flusher's. */
  pthread_mutex_t ship_lock;
  struct conn ships[MAX_SLOTS];  /* gman_ship's, one per slot too */
  bool ever_open[MAX_SLOTS]; /* slot i had a connection before: a new one reconnects */
  bool ever_shipped[MAX_SLOTS]; /* the same for ships[i] */
  /* token.c: random bytes not handed out yet, and the token gman_token() made last until
   * gman_ship_ledger() takes it. */
  unsigned char random[TOKEN_POOL];
  size_t random_left;
  char pending[TOKEN_HEX + 1];
  bool has_pending;
};

/* The library's constructor and destructor call these. */
void threads_start(void);
void threads_stop(void);

/* This thread's state, its config snapshot current; NULL only if out of memory. */
struct thread_state *thread_state_get(void);
/* fn(st, arg) for every thread's state, with the registry locked: no state is freed
 * meanwhile, and no thread starts or ends its first call. */
void threads_each(void (*fn)(struct thread_state *st, void *arg), void *arg);

/* Close c and free its buffers (whatever was received is of no use to a new connection,
 * and what was not sent is its ledger rows' to ship again). */
void conn_close(struct conn *c);
/* Room in c->out for `more` bytes; false if out of memory. */
bool out_reserve(struct conn *c, size_t more);

/* Milliseconds until deadline, 0 when it has passed. */
int ms_left(int64_t deadline);
/* 1 when fd is ready for events (or has an error to report), 0 at the deadline. */
int wait_fd(int fd, short events, int64_t deadline);

/* Connect c to s; IO_LOST (a reason in why) if no address takes the connection. */
enum io conn_open(struct conn *c, const struct server *s, int64_t deadline, char *why,
                  size_t size);
/* Connect c to s, the server of slot i, counted in the status as this thread's. */
enum io slot_open(struct thread_state *st, unsigned i, struct conn *c, const struct server *s,
                  int64_t deadline, char *why, size_t size);
/* Whether a kept connection was closed by the server (or holds bytes nobody asked for). */
bool conn_stale(const struct conn *c);
/* Send every byte of iov[0..n), straight from the caller's buffers. */
enum io conn_send(struct conn *c, struct iovec *iov, int n, int64_t deadline);
/* Receive until in[in_start, in_start + want) is filled; the buffer grows to fit. */
enum io conn_fill(struct conn *c, size_t want, int64_t deadline);

#endif
