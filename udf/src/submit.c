/*
 * submit.c: a job sent to the first of its servers that takes it, with fail-over, back-off
 * and at most one resend, all within the submit deadline (timeout_ms).
 */
#include "submit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rate_limit g_server_log[MAX_SLOTS];

static uint32_t submit_type(const struct udf_spec *spec)
{
  static const uint32_t types[3][3] = {
    [JOB_FOREGROUND] = { SUBMIT_JOB, SUBMIT_JOB_HIGH, SUBMIT_JOB_LOW },
    [JOB_BACKGROUND] = { SUBMIT_JOB_BG, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW_BG },
    [JOB_EPOCH] = { SUBMIT_JOB_EPOCH, SUBMIT_JOB_EPOCH, SUBMIT_JOB_EPOCH },
  };
  return types[spec->kind][spec->priority];
}

/* The arguments of job's submit request; epoch holds the text of its time (24 bytes). */
static struct packet_args submit_args(const struct udf_spec *spec, const struct job *job,
                                      char *epoch)
{
  if (spec->kind != JOB_EPOCH)
    return (struct packet_args){
      3, { job->function, job->unique, job->workload },
      { job->function_len, job->unique_len, job->workload_len },
    };
  return (struct packet_args){
    4, { job->function, job->unique, epoch, job->workload },
    { job->function_len, job->unique_len,
      (size_t)snprintf(epoch, 24, "%lld", job->epoch), job->workload_len },
  };
}

/* Send job's submit request (of the kind and priority spec says) on c. */
enum io send_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
                    int64_t deadline)
{
  char epoch[24];
  struct packet_args args = submit_args(spec, job, epoch);
  return packet_send(c, submit_type(spec), &args, deadline);
}

/* The same request into c's buffer, for the flusher to send (ship.c). */
enum io queue_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
                     int64_t deadline)
{
  char epoch[24];
  struct packet_args args = submit_args(spec, job, epoch);
  return ship_append(c, submit_type(spec), &args, deadline);
}

/* The log line's text for an outcome that is not O_OK. */
const char *outcome_text(enum outcome o)
{
  switch (o) {
  case O_JOB_FAILED:
    return "the worker failed the job";
  case O_WORKER_TIMEOUT:
    return "accepted, but no result within result_timeout_ms (not submitted again)";
  case O_SERVER_TIMEOUT:
    return "no answer within timeout_ms; server skipped for backoff_ms";
  case O_LOST_BEFORE_ACK:
    return "connection lost before the job was acknowledged; server skipped for backoff_ms";
  case O_LOST_AFTER_ACK:
    return "connection lost after the job was accepted (not submitted again); "
           "server skipped for backoff_ms";
  case O_UNREACHABLE:
  case O_REFUSED:
    return "server skipped for backoff_ms";
  case O_PROTOCOL:
    return "not a Gearman answer to this job; server skipped for backoff_ms";
  case O_NO_MEMORY:
    return "out of memory";
  case O_DEADLINE:
    return "timeout_ms passed before the next server";
  case O_NO_SERVER:
    return "no server took the job";
  case O_OK:
  default:
    return "ok";
  }
}


/*
 * Try the job's servers in order, all within s->deadline, and return how the last attempt
 * ended, its server in *slot. This is the one place that decides, for every family of
 * functions, which server is skipped (backed off), when a job is sent again (once, on a new
 * connection, when a reused one was lost before gearmand acknowledged it; or to the next
 * server when it surely did not get in), and which failure backs a server off.
 */
enum outcome submit_route(const struct sender *s, const struct job *job, unsigned *slot)
{
  const struct server_list *list =
      config_servers_for(s->config, job->function, job->function_len);
  bool resubmit = false; /* the previous attempt lost its connection before the ack */
  for (unsigned k = 0; k < list->n; k++) {
    unsigned i = list->slot[k];
    if (!(s->in_use != NULL && s->in_use(s->self, i)) && server_backed_off(i)) {
      count(C_SKIPPED_BACKOFF);
      continue;
    }
    struct conn *c = s->take(s->self, i);
    if (c == NULL)
      continue;
    bool reused = c->fd >= 0;
    char why[160] = "";
    if (resubmit)
      count(C_RESUBMITTED);
    enum outcome o = s->attempt(s->self, i, c, why, sizeof why);
    if (o == O_LOST_BEFORE_ACK && reused) {
      conn_close(c); /* lost between the check and the send: one more, on a new one */
      count(C_RESUBMITTED);
      o = s->attempt(s->self, i, c, why, sizeof why);
    }
    *slot = i;
    if (o == O_OK)
      return o;
    if (o != O_JOB_FAILED) /* else the connection is in step: the caller keeps it */
      conn_close(c);
    if (o != O_JOB_FAILED && o != O_WORKER_TIMEOUT && o != O_NO_MEMORY)
      server_back_off(i, s->config->backoff_ms);
    /* Only a job that surely did not get in goes on to the next server. */
    bool next = o == O_LOST_BEFORE_ACK || o == O_UNREACHABLE || o == O_REFUSED;
    s->failed(s->self, i, o, why, next);
    if (!next)
      return o;
    resubmit = o == O_LOST_BEFORE_ACK;
    if (now_ms() >= s->deadline)
      return O_DEADLINE;
  }
  return O_NO_SERVER;
}
