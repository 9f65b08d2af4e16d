/*
 * submit.h: a job sent to the first of its servers that takes it (submit.c), with
 * fail-over, back-off and at most one resend, all within one deadline.
 */
#ifndef GMU_SUBMIT_H
#define GMU_SUBMIT_H

#include "args.h"
#include "protocol.h"

#define SHIP_WINDOW 1024 /* gman_ship acknowledgements owed on a connection, at most */

/* Log lines about a server, one rate limit per slot (atomic fields: no lock). */
extern struct rate_limit g_server_log[MAX_SLOTS];

/* Send job's submit request (of the kind and priority spec says) on c. */
enum io send_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
                    int64_t deadline);

/*
 * Submit job to the first server that takes it, all within one deadline: the handle, the
 * worker's result or (gman_ship) the unique in call's buffer. See udf/README.md for when a
 * job is sent again and when a server is backed off.
 */
bool submit(struct call *call, const struct job *job);

#endif
