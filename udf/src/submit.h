/*
 * submit.h: a job sent to the first of its servers that takes it (submit.c), with
 * fail-over, back-off and at most one resend, all within the submit deadline (timeout_ms):
 * one path for every family of functions (job_udfs.c, sum.c).
 */
#ifndef GMU_SUBMIT_H
#define GMU_SUBMIT_H

#include "args.h"
#include "protocol.h"
#include "ship.h"

/* Log lines about a server, one rate limit per slot (atomic fields: no lock). */
extern struct rate_limit g_server_log[MAX_SLOTS];

/* Send job's submit request (of the kind and priority spec says) on c. */
enum io send_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
                    int64_t deadline);
/* The same request into c's buffer, for the flusher to send (ship.c). */
enum io queue_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
                     int64_t deadline);

/* How one attempt on one server ended; submit_route() decides from it what comes next. */
enum outcome {
  O_OK,              /* the handle, or the worker's result, is in the call */
  O_JOB_FAILED,      /* WORK_FAIL or WORK_EXCEPTION: the job ran */
  O_WORKER_TIMEOUT,  /* accepted, but no result before the result deadline */
  O_SERVER_TIMEOUT,  /* no connection or no JOB_CREATED before the submit deadline */
  O_LOST_BEFORE_ACK, /* connection lost before JOB_CREATED: the job may be sent again */
  O_LOST_AFTER_ACK,  /* connection lost after it: the job may run, it is not sent again */
  O_UNREACHABLE,     /* no address, or the connection refused: nothing was sent */
  O_REFUSED,         /* gearmand answered the submit with ERROR */
  O_PROTOCOL,        /* bytes that are not a Gearman response to this job */
  O_NO_MEMORY,
  O_DEADLINE,        /* the deadline passed before the next server was tried */
  O_NO_SERVER,       /* every server of the list skipped or tried */
};


/* The log line's text for an outcome that is not O_OK. */
const char *outcome_text(enum outcome o);

/* A family's way of sending one job on one server; submit_route() drives it. */
struct sender {
  void *self; /* what the callbacks are given */
  const struct config *config; /* the snapshot whose slots the lists name */
  int64_t deadline; /* no server is tried after it: the submit deadline */
  /* Whether the caller relies on its open connection to slot i (jobs of its own are out on
   * it): then the server is used although backed off. NULL: never. */
  bool (*in_use)(void *self, unsigned i);
  /* Slot i's connection for the job (fd -1 if none is open), or NULL to skip the server. */
  struct conn *(*take)(void *self, unsigned i);
  /* Send the job on c, opened first if closed, and wait for what the family waits for. */
  enum outcome (*attempt)(void *self, unsigned i, struct conn *c, char *why, size_t size);
  /* An attempt failed with o (the server backed off already if it was its fault); `next`
   * says the job goes on to the next server. */
  void (*failed)(void *self, unsigned i, enum outcome o, const char *why, bool next);
};

enum outcome submit_route(const struct sender *s, const struct job *job, unsigned *slot);

#endif
