/*
 * submit.c: a job sent to the first of its servers that takes it, with fail-over, back-off
 * and at most one resend, all within one deadline.
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

/* Send job's submit request (of the kind and priority spec says) on c. */
enum io send_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
                           int64_t deadline)
{
  char head[HEADER_SIZE + MAX_FUNCTION + 1 + MAX_UNIQUE + 1 + 24];
  size_t n = HEADER_SIZE;
  memcpy(head + n, job->function, job->function_len);
  n += job->function_len;
  head[n++] = '\0';
  memcpy(head + n, job->unique, job->unique_len);
  n += job->unique_len;
  head[n++] = '\0';
  if (spec->kind == JOB_EPOCH)
    n += (size_t)snprintf(head + n, sizeof head - n, "%lld", job->epoch) + 1;
  memcpy(head, "\0REQ", 4);
  put_be32(head + 4, submit_type(spec));
  put_be32(head + 8, (uint32_t)(n - HEADER_SIZE + job->workload_len));
  struct iovec iov[2] = { { head, n }, { (void *)job->workload, job->workload_len } };
  return conn_send(c, iov, job->workload_len ? 2 : 1, deadline);
}

/*
 * Read the acknowledgements c owes for gman_ship jobs until at most `keep` are owed, or
 * the deadline: IO_TIMEOUT then means more are owed (with a deadline already past, only
 * what has arrived is read). A job gearmand refused is logged and counted; its ledger row
 * ships it again.
 */
static enum io conn_settle(struct conn *c, unsigned keep, int64_t deadline)
{
  while (c->owed > keep) {
    struct packet p = { 0, NULL, 0 };
    enum io r = conn_read(c, &p, deadline);
    if (r != IO_OK)
      return r;
    if (p.type == ERROR_PACKET) {
      const char *text = memchr(p.body, '\0', p.size);
      char echo[41];
      text = text ? text + 1 : p.body;
      count(C_SHIP_REFUSED);
      UDF_LOG(&g_job_log, "gman_ship: gearmand answered ERROR '%s' to a job sent earlier",
              shown(text, p.size - (size_t)(text - p.body), echo));
    } else if (p.type != JOB_CREATED) {
      return IO_PROTOCOL;
    }
    c->owed--;
  }
  return IO_OK;
}

/* How one attempt on one server ended; submit() decides from it what comes next. */
enum outcome {
  O_OK,              /* the handle, or the worker's result, is in the call */
  O_JOB_FAILED,      /* WORK_FAIL or WORK_EXCEPTION: the job ran */
  O_WORKER_TIMEOUT,  /* accepted, but no result before the deadline */
  O_SERVER_TIMEOUT,  /* no connection or no JOB_CREATED before the deadline */
  O_LOST_BEFORE_ACK, /* connection lost before JOB_CREATED: the job may be sent again */
  O_LOST_AFTER_ACK,  /* connection lost after it: the job may run, it is not sent again */
  O_UNREACHABLE,     /* no address, or the connection refused: nothing was sent */
  O_REFUSED,         /* gearmand answered the submit with ERROR */
  O_PROTOCOL,        /* bytes that are not a Gearman response to this job */
  O_NO_MEMORY,
};

/* One attempt on server i with connection c (opened here if closed); why says more. */
static enum outcome submit_once(struct thread_state *st, unsigned i, struct conn *c,
                                struct call *call, const struct job *job, int64_t deadline,
                                char *why, size_t size)
{
  if (c->fd < 0) {
    enum io r = slot_open(st, i, c, &st->config.slots[i], deadline, why, size);
    if (r == IO_NO_MEMORY)
      return O_NO_MEMORY;
    if (r != IO_OK)
      return r == IO_TIMEOUT ? O_SERVER_TIMEOUT : O_UNREACHABLE;
  }

  enum io r = send_submit(c, call->spec, job, deadline);
  if (r != IO_OK)
    return r == IO_TIMEOUT ? O_SERVER_TIMEOUT : O_LOST_BEFORE_ACK;

  call->len = 0;
  if (call->spec->unacknowledged) {
    c->owed++;
    return call_append(call, job->unique, job->unique_len) ? O_OK : O_NO_MEMORY;
  }
  size_t handle_len = 0;
  char handle[MAX_HANDLE];
  for (;;) {
    struct packet p = { 0, NULL, 0 };
    r = conn_read(c, &p, deadline);
    if (r == IO_TIMEOUT)
      return handle_len ? O_WORKER_TIMEOUT : O_SERVER_TIMEOUT;
    if (r == IO_LOST)
      return handle_len ? O_LOST_AFTER_ACK : O_LOST_BEFORE_ACK;
    if (r == IO_NO_MEMORY)
      return O_NO_MEMORY;
    if (r == IO_PROTOCOL)
      return O_PROTOCOL;
    if (handle_len == 0) {
      if (p.type == ERROR_PACKET) {
        const char *text = memchr(p.body, '\0', p.size);
        char echo[41];
        text = text ? text + 1 : p.body;
        snprintf(why, size, "gearmand answered ERROR '%s'",
                 shown(text, p.size - (size_t)(text - p.body), echo));
        return O_REFUSED;
      }
      if (p.type != JOB_CREATED || p.size == 0 || p.size > MAX_HANDLE)
        return O_PROTOCOL;
      memcpy(handle, p.body, p.size);
      handle_len = p.size;
      if (call->spec->kind != JOB_FOREGROUND)
        return call_append(call, handle, handle_len) ? O_OK : O_NO_MEMORY;
      continue;
    }
    /* Every packet about a foreground job is "handle[\0data]"; only ours can come. */
    if (p.size < handle_len || memcmp(p.body, handle, handle_len) != 0 ||
        (p.size > handle_len && p.body[handle_len] != '\0'))
      return O_PROTOCOL;
    size_t data_len = p.size > handle_len ? p.size - handle_len - 1 : 0;
    const char *data = p.body + p.size - data_len;
    switch (p.type) {
    case WORK_STATUS:
    case WORK_WARNING:
      continue;
    case WORK_DATA: /* the result in parts, as libgearman's gearman_client_do joins them */
    case WORK_COMPLETE:
      if (!call_append(call, data, data_len)) {
        snprintf(why, size, "the result is over %u bytes or out of memory", MAX_PACKET);
        return O_NO_MEMORY;
      }
      if (p.type == WORK_COMPLETE)
        return O_OK;
      continue;
    case WORK_FAIL:
    case WORK_EXCEPTION:
      return O_JOB_FAILED;
    default:
      return O_PROTOCOL;
    }
  }
}

/* The log line's text for an outcome that is not O_OK. */
static const char *outcome_text(enum outcome o)
{
  switch (o) {
  case O_JOB_FAILED:
    return "the worker failed the job";
  case O_WORKER_TIMEOUT:
    return "accepted, but no result within timeout_ms (not submitted again)";
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
  case O_OK:
  default:
    return "ok";
  }
}

/*
 * Submit job to the first server that takes it, all within one deadline. See the header
 * comment for when a job is sent again and when a server is backed off.
 */
bool submit(struct call *call, const struct job *job)
{
  struct thread_state *st = thread_state_get();
  if (st == NULL) {
    UDF_LOG(&g_misc_log, "out of memory");
    count(C_FAILED);
    return false;
  }
  int64_t deadline = now_ms() + st->config.timeout_ms;
  bool resubmit = false; /* the previous attempt lost its connection before the ack */
  const struct server_list *list =
      config_servers_for(&st->config, job->function, job->function_len);
  for (unsigned k = 0; k < list->n; k++) {
    unsigned i = list->slot[k];
    if (server_backed_off(i)) {
      count(C_SKIPPED_BACKOFF);
      continue;
    }
    struct conn *c = call->spec->unacknowledged ? &st->ships[i] : &st->conns[i];
    if (c->fd >= 0 && c->owed > 0) {
      /* Read what has come; wait (for one) only when SHIP_WINDOW are owed. */
      bool full = c->owed >= SHIP_WINDOW;
      enum io r = conn_settle(c, full ? SHIP_WINDOW - 1 : 0, full ? deadline : now_ms());
      if (r != IO_OK && !(r == IO_TIMEOUT && !full)) {
        /* What it owed is the ledger's to ship again. A gearmand that acknowledges
         * nothing for timeout_ms is stalled: skipped, so that rows are made due at once. */
        const struct server *s = &st->config.slots[i];
        count_n(C_SHIP_UNACKNOWLEDGED, c->owed);
        UDF_LOG(&g_server_log[i], "%s:%u: %u jobs gman_ship sent were never acknowledged "
                "(%s); their ledger rows ship them again", s->host, s->port, c->owed,
                r == IO_TIMEOUT ? "none within timeout_ms; server skipped for backoff_ms"
                : "connection lost");
        conn_close(c);
        if (r == IO_TIMEOUT) {
          count(C_TIMED_OUT);
          server_back_off(i, st->config.backoff_ms);
          continue;
        }
      }
    }
    if (c->fd >= 0 && c->owed == 0 && conn_stale(c))
      conn_close(c); /* gearmand restarted or closed it: nothing was sent on it yet */
    bool reused = c->fd >= 0;
    char why[160] = "";
    if (resubmit)
      count(C_RESUBMITTED);
    enum outcome o = submit_once(st, i, c, call, job, deadline, why, sizeof why);
    if (o == O_LOST_BEFORE_ACK && reused) {
      conn_close(c); /* lost between the check and the send: one more, on a new one */
      count(C_RESUBMITTED);
      o = submit_once(st, i, c, call, job, deadline, why, sizeof why);
    }
    if (o == O_OK || o == O_JOB_FAILED) { /* the connection is in step: keep it */
      if (c->in_cap > IN_BUFFER_KEEP && c->in_start == c->in_end) {
        free(c->in);
        c->in = NULL;
        c->in_cap = c->in_start = c->in_end = 0;
      }
      if (o == O_OK) {
        count(C_SUBMITTED);
        return true;
      }
    } else {
      conn_close(c);
    }
    const struct server *s = &st->config.slots[i];
    bool server_fault = o != O_JOB_FAILED && o != O_WORKER_TIMEOUT && o != O_NO_MEMORY;
    UDF_LOG(server_fault ? &g_server_log[i] : &g_job_log,
            "%s:%u: '%.*s' (timeout_ms=%d) %s%s%s", s->host, s->port,
            (int)(job->function_len > 100 ? 100 : job->function_len), job->function,
            st->config.timeout_ms, why, why[0] ? ": " : "", outcome_text(o));
    if (o == O_WORKER_TIMEOUT || o == O_SERVER_TIMEOUT)
      count(C_TIMED_OUT);
    if (server_fault)
      server_back_off(i, st->config.backoff_ms);
    /* Only a job that surely did not get in goes on to the next server. */
    if (o != O_LOST_BEFORE_ACK && o != O_UNREACHABLE && o != O_REFUSED)
      break;
    resubmit = o == O_LOST_BEFORE_ACK;
    if (now_ms() >= deadline) {
      count(C_TIMED_OUT);
      break;
    }
  }
  count(C_FAILED);
  return false;
}

