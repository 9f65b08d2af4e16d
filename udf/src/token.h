/*
 * token.h: the ledger tokens of the host's immediate delivery (token.c). gman_token()
 * writes a fresh one into the trigger's ledger row and leaves it pending in the calling
 * thread; gman_ship_ledger() (job_udfs.c) takes it from there to name the row's job, so
 * that the token never goes through SQL anywhere it could be read.
 */
#ifndef GMU_TOKEN_H
#define GMU_TOKEN_H

#include "conn.h"

/* The thread's pending token (TOKEN_HEX characters and a NUL) moved into out: false when
 * there is none, as when gman_token() has not run in this thread since the last take. */
bool token_take(struct thread_state *st, char *out);

#endif
