/*
 * ship.h: gman_ship's requests, gathered per connection and sent a few at a time (ship.c).
 */
#ifndef GMU_SHIP_H
#define GMU_SHIP_H

#include "protocol.h"

/* How long a thread's ship requests gather before the flusher sends them, in microseconds:
 * the rows of one statement go out in one send(), and the job of a short transaction
 * reaches a worker after its commit more often. */
#define SHIP_GATHER_US 1000
/* A buffer this full is sent by its own thread before the next request goes in. */
#define SHIP_BUFFER_BYTES 65536
/* A buffer grown past this (for a big workload) is freed once it is sent. */
#define SHIP_BUFFER_KEEP (1 << 20)

/* Append a request to c's buffer (c->owed is the caller's), for the flusher to send. The
 * caller holds its thread's ship_lock. IO_NO_MEMORY, IO_PROTOCOL (not a request), or, when
 * no flusher thread can run, how sending it at once within the deadline went. */
enum io ship_append(struct conn *c, uint32_t type, const struct packet_args *args,
                    int64_t deadline);

/* Send what c's buffer holds, waiting for the socket until the deadline at most. */
enum io ship_send(struct conn *c, int64_t deadline);

/* c's buffer emptied or dropped (conn_close): no more for the flusher to send from it. */
void ship_forget(struct conn *c);

/* The library unloads: the flusher thread ends before any state is freed. */
void ship_stop(void);

#endif
