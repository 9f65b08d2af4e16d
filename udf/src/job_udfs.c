/*
 * job_udfs.c: gman_do_background, gman_do_high_background, gman_do_low_background,
 * gman_do_epoch_background, gman_ship, gman_do, gman_do_high and gman_do_low: one job per
 * row, each through the same init, row function and submit().
 */
#include "submit.h"
#include "token.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHIP_WINDOW 1024 /* gman_ship acknowledgements owed on a connection, at most */

/* One job of a row on its way: what submit_route()'s callbacks are given. */
struct job_submit {
  struct thread_state *st;
  struct call *call;
  const struct job *job;
  int64_t deadline;        /* connect and submit, up to JOB_CREATED: timeout_ms */
  int64_t result_deadline; /* a foreground job's result: config_result_wait_ms() */
};

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
      char echo[41];
      count(C_SHIP_REFUSED);
      UDF_LOG(&g_job_log, "gman_ship: gearmand answered ERROR '%s' to a job sent earlier",
              packet_error_text(&p, echo));
    } else if (p.type != JOB_CREATED) {
      return IO_PROTOCOL;
    }
    c->owed--;
  }
  return IO_OK;
}

/* One attempt on server i with connection c (opened here if closed); why says more. */
static enum outcome submit_once(void *self, unsigned i, struct conn *c, char *why, size_t size)
{
  struct job_submit *js = self;
  struct thread_state *st = js->st;
  struct call *call = js->call;
  const struct job *job = js->job;
  int64_t deadline = js->deadline;
  if (c->fd < 0) {
    enum io r = slot_open(st, i, c, &st->config.slots[i], deadline, why, size);
    if (r == IO_NO_MEMORY)
      return O_NO_MEMORY;
    if (r != IO_OK)
      return r == IO_TIMEOUT ? O_SERVER_TIMEOUT : O_UNREACHABLE;
  }

  enum io r = call->spec->unacknowledged ? queue_submit(c, call->spec, job, deadline)
                                          : send_submit(c, call->spec, job, deadline);
  if (r == IO_NO_MEMORY)
    return O_NO_MEMORY;
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
    r = conn_read(c, &p, handle_len ? js->result_deadline : deadline);
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
        char echo[41];
        snprintf(why, size, "gearmand answered ERROR '%s'", packet_error_text(&p, echo));
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

/* The thread's connection to slot i, its gman_ship acknowledgements read first. */
static struct conn *job_take(void *self, unsigned i)
{
  struct job_submit *js = self;
  struct thread_state *st = js->st;
  struct conn *c = js->call->spec->unacknowledged ? &st->ships[i] : &st->conns[i];
  if (c->fd >= 0 && c->owed > 0) {
    /* Read what has come; wait only when SHIP_WINDOW are owed, after sending
     * what the buffer holds (as when it holds SHIP_BUFFER_BYTES, or has gathered for
     * SHIP_GATHER_US). */
    bool full = c->owed >= SHIP_WINDOW;
    enum io r = IO_OK;
    if (c->out_len > 0 && (full || c->out_len >= SHIP_BUFFER_BYTES))
      r = ship_send(c, js->deadline);
    else if (c->out_len > 0 && now_ms() - c->out_since >= SHIP_GATHER_US / 1000) {
      /* A busy session sends its own (the flusher skips it): what the socket takes now.
       * The rest waits in the buffer; a server that takes nothing for timeout_ms is the
       * flusher's to give up. */
      r = ship_send(c, now_ms());
      if (r == IO_TIMEOUT)
        r = IO_OK;
    }
    if (r == IO_OK) {
      /* Down to half the window when it was full: the calls that follow go on without
       * waiting, and their requests are still sent a buffer at a time. */
      r = conn_settle(c, full ? SHIP_WINDOW / 2 : 0, full ? js->deadline : now_ms());
      if (r == IO_TIMEOUT && !full)
        r = IO_OK; /* the rest come later */
    }
    if (r != IO_OK) {
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
        return NULL;
      }
    }
  }
  if (c->fd >= 0 && c->owed == 0 && conn_stale(c))
    conn_close(c); /* gearmand restarted or closed it: nothing was sent on it yet */
  return c;
}

static void job_failed(void *self, unsigned i, enum outcome o, const char *why, bool next)
{
  struct job_submit *js = self;
  const struct config *config = &js->st->config;
  const struct server *s = &config->slots[i];
  bool server_fault = o != O_JOB_FAILED && o != O_WORKER_TIMEOUT && o != O_NO_MEMORY;
  bool waited_for_result = o == O_WORKER_TIMEOUT;
  (void)next;
  UDF_LOG(server_fault ? &g_server_log[i] : &g_job_log,
          "%s:%u: '%.*s' (%s=%d) %s%s%s", s->host, s->port,
          (int)(js->job->function_len > 100 ? 100 : js->job->function_len), js->job->function,
          waited_for_result ? "result_timeout_ms" : "timeout_ms",
          waited_for_result ? config_result_wait_ms(config) : config->timeout_ms, why,
          why[0] ? ": " : "", outcome_text(o));
  if (o == O_WORKER_TIMEOUT || o == O_SERVER_TIMEOUT)
    count(C_TIMED_OUT);
}

/*
 * Submit job to the first server that takes it, within timeout_ms up to gearmand's
 * acknowledgement and, for a foreground job, within config_result_wait_ms() in all: the
 * handle, the worker's result or (gman_ship) the unique in call's buffer.
 */
static bool submit(struct call *call, const struct job *job)
{
  struct thread_state *st = thread_state_get();
  if (st == NULL) {
    UDF_LOG(&g_misc_log, "out of memory");
    count(C_FAILED);
    return false;
  }
  int64_t started = now_ms();
  struct job_submit js = { st, call, job, started + st->config.timeout_ms,
                           started + config_result_wait_ms(&st->config) };
  struct sender sender = {
    .self = &js, .config = &st->config, .deadline = js.deadline,
    .take = job_take, .attempt = submit_once, .failed = job_failed,
  };
  unsigned i = 0;
  bool ships = call->spec->unacknowledged;
  if (ships)
    pthread_mutex_lock(&st->ship_lock); /* the flusher sends from the same buffers */
  enum outcome o = submit_route(&sender, job, &i);
  if (o == O_OK || o == O_JOB_FAILED) { /* the connection is in step: keep it */
    struct conn *c = call->spec->unacknowledged ? &st->ships[i] : &st->conns[i];
    if (c->in_cap > IN_BUFFER_KEEP && c->in_start == c->in_end) {
      free(c->in);
      c->in = NULL;
      c->in_cap = c->in_start = c->in_end = 0;
    }
  }
  if (ships)
    pthread_mutex_unlock(&st->ship_lock);
  if (o == O_OK) {
    count(C_SUBMITTED);
    return true;
  }
  if (o == O_DEADLINE)
    count(C_TIMED_OUT);
  count(C_FAILED);
  return false;
}


/* The end of a job function's init: its per-statement state, a result that may be NULL. */
static udf_bool call_start(const struct udf_spec *spec, UDF_INIT *initid, char *message,
                           unsigned long max_length)
{
  struct call *call = calloc(1, sizeof *call);
  if (call == NULL) {
    init_error(message, spec->usage, "out of memory");
    return 1;
  }
  call->spec = spec;
  initid->ptr = (char *)call;
  initid->maybe_null = 1;
  initid->const_item = 0;
  initid->max_length = max_length;
  config_refresh();
  return 0;
}

static udf_bool job_init(const struct udf_spec *spec, UDF_INIT *initid, UDF_ARGS *args,
                         char *message)
{
  unsigned fixed = spec->kind == JOB_EPOCH ? 3 : 2;
  if (args->arg_count < fixed || args->arg_count > fixed + 1) {
    init_error(message, spec->usage, "expected %u or %u arguments, got %u", fixed, fixed + 1,
               args->arg_count);
    return 1;
  }
  if (!function_arg_ok(spec->usage, args, 0, message))
    return 1;
  const char *problem;
  args->arg_type[1] = STRING_RESULT;
  if (spec->kind == JOB_EPOCH) {
    /* A string literal is refused; a string column is converted, NULL gives NULL. */
    enum Item_result t = args->arg_type[2];
    if (is_literal(args, 2) && !is_number(t)) {
      init_error(message, spec->usage, "unix_time must be a number like UNIX_TIMESTAMP() + 60");
      return 1;
    }
    if (is_literal(args, 2) && !const_epoch_ok(t, args->args[2], args->lengths[2])) {
      init_error(message, spec->usage, "unix_time must be 0..%lld: seconds, not milliseconds",
                 MAX_EPOCH);
      return 1;
    }
    args->arg_type[2] = INT_RESULT;
  }
  if (args->arg_count == fixed + 1) {
    /* A number (NEW.id) needs no check, and its value here is still binary: mysqld makes
     * it the digits only for the row calls. */
    if (args->arg_type[fixed] == STRING_RESULT && is_literal(args, fixed) &&
        (problem = name_problem(args->args[fixed], args->lengths[fixed], MAX_UNIQUE)) != NULL) {
      init_error(message, spec->usage, "unique %s", problem);
      return 1;
    }
    args->arg_type[fixed] = STRING_RESULT;
  }

  return call_start(spec, initid, message,
                    spec->kind == JOB_FOREGROUND ? FOREGROUND_MAX_LENGTH : MAX_HANDLE);
}

/* A row-time check of a name that was not a constant; false (and a log line) if unusable. */
static bool row_name_ok(const char *p, size_t n, size_t max, const char *what,
                        const struct udf_spec *spec)
{
  const char *problem = name_problem(p, n, max);
  if (problem == NULL)
    return true;
  UDF_LOG(&g_misc_log, "%s: %s %s; job not submitted", spec->usage, what, problem);
  return false;
}

static char *job_row(UDF_INIT *initid, UDF_ARGS *args, unsigned long *length,
                     udf_flag *is_null, udf_flag *error)
{
  struct call *call = (struct call *)initid->ptr;
  const struct udf_spec *spec = call->spec;
  unsigned fixed = spec->kind == JOB_EPOCH ? 3 : 2;
  struct job job = {
    .function = args->args[0],
    .function_len = args->lengths[0],
    .workload = args->args[1],
    .workload_len = args->args[1] ? args->lengths[1] : 0,
  };
  (void)error; /* a failed submit is NULL, never an error: see the header comment */
  *is_null = 1;
  if (job.function == NULL || job.function_len == 0 ||
      !row_name_ok(job.function, job.function_len, MAX_FUNCTION, "function", spec))
    return NULL;
  if (spec->kind == JOB_EPOCH) {
    if (args->args[2] == NULL)
      return NULL;
    job.epoch = *(long long *)args->args[2];
    if (job.epoch < 0 || job.epoch > MAX_EPOCH) {
      UDF_LOG(&g_misc_log, "%s: unix_time %lld is not 0..%lld; job not submitted",
              spec->usage, job.epoch, MAX_EPOCH);
      return NULL;
    }
  }
  if (args->arg_count > fixed && args->args[fixed] != NULL && args->lengths[fixed] > 0) {
    job.unique = args->args[fixed];
    job.unique_len = args->lengths[fixed];
    if (!row_name_ok(job.unique, job.unique_len, MAX_UNIQUE, "unique", spec))
      return NULL;
  } else {
    unique_generate(call->unique);
    job.unique = call->unique;
    job.unique_len = GENERATED_UNIQUE_LEN;
  }
  if (job.workload_len > MAX_WORKLOAD) {
    UDF_LOG(&g_misc_log, "%s: workload over 1 GiB; job not submitted", spec->usage);
    return NULL;
  }
  if (!submit(call, &job))
    return NULL;
  *is_null = 0;
  *length = call->len;
  return call->buf;
}

/* The three entry points of one job function; all of them share job_init and job_row. */
#define JOB_UDF(name, usage_text, job_kind, job_priority)                                 \
  JOB_UDF_ACK(name, usage_text, job_kind, job_priority, false)
#define JOB_UDF_ACK(name, usage_text, job_kind, job_priority, unacknowledged)             \
  static const struct udf_spec name##_spec = { usage_text, job_kind, job_priority,         \
                                               unacknowledged };                           \
  UDF_EXPORT udf_bool name##_init(UDF_INIT *initid, UDF_ARGS *args, char *message)         \
  {                                                                                        \
    return job_init(&name##_spec, initid, args, message);                                  \
  }                                                                                        \
  CALL_DEINIT(name)                                                                        \
  UDF_EXPORT char *name(UDF_INIT *initid, UDF_ARGS *args, char *result,                    \
                        unsigned long *length, udf_flag *is_null, udf_flag *error)         \
  {                                                                                        \
    (void)result;                                                                          \
    return job_row(initid, args, length, is_null, error);                                  \
  }

JOB_UDF(gman_do_background, "gman_do_background(function, workload [, unique])",
        JOB_BACKGROUND, PRIORITY_NORMAL)
JOB_UDF(gman_do_high_background, "gman_do_high_background(function, workload [, unique])",
        JOB_BACKGROUND, PRIORITY_HIGH)
JOB_UDF(gman_do_low_background, "gman_do_low_background(function, workload [, unique])",
        JOB_BACKGROUND, PRIORITY_LOW)
JOB_UDF(gman_do_epoch_background,
        "gman_do_epoch_background(function, workload, unix_time [, unique])",
        JOB_EPOCH, PRIORITY_NORMAL)
JOB_UDF_ACK(gman_ship, "gman_ship(function, workload [, unique])", JOB_BACKGROUND,
            PRIORITY_NORMAL, true)
JOB_UDF(gman_do, "gman_do(function, workload [, unique])", JOB_FOREGROUND, PRIORITY_NORMAL)
JOB_UDF(gman_do_high, "gman_do_high(function, workload [, unique])",
        JOB_FOREGROUND, PRIORITY_HIGH)
JOB_UDF(gman_do_low, "gman_do_low(function, workload [, unique])",
        JOB_FOREGROUND, PRIORITY_LOW)


/*
 * gman_ship_ledger(function, ledger_id): gman_ship of the host's ledger row ledger_id, whose
 * unique is L<ledger_id>:<token>, the token being the one gman_token() made last in this
 * thread (token.c), taken so that it is sent once. It returns L<ledger_id>, never the token,
 * or NULL when nothing was sent: no token pending, or no server took the job.
 */
static const struct udf_spec gman_ship_ledger_spec = {
  "gman_ship_ledger(function, ledger_id)", JOB_BACKGROUND, PRIORITY_NORMAL, true
};

UDF_EXPORT udf_bool gman_ship_ledger_init(UDF_INIT *initid, UDF_ARGS *args, char *message)
{
  const struct udf_spec *spec = &gman_ship_ledger_spec;
  if (args->arg_count != 2) {
    init_error(message, spec->usage, "expected 2 arguments, got %u", args->arg_count);
    return 1;
  }
  if (!function_arg_ok(spec->usage, args, 0, message))
    return 1;
  args->arg_type[1] = INT_RESULT;
  return call_start(spec, initid, message, 21); /* L and a BIGINT's digits */
}

CALL_DEINIT(gman_ship_ledger)

UDF_EXPORT char *gman_ship_ledger(UDF_INIT *initid, UDF_ARGS *args, char *result,
                                  unsigned long *length, udf_flag *is_null, udf_flag *error)
{
  struct call *call = (struct call *)initid->ptr;
  const struct udf_spec *spec = call->spec;
  (void)result;
  (void)error; /* a failed ship is NULL, never an error: the row is then made due */
  *is_null = 1;
  struct thread_state *st = thread_state_get();
  char token[TOKEN_HEX + 1];
  if (st == NULL || !token_take(st, token)) {
    if (st != NULL && args->args[0] != NULL) /* a NULL function: a probe, not a ship */
      UDF_LOG(&g_job_log, "%s: no token pending (gman_token() did not run before it in "
              "this statement); job not submitted", spec->usage);
    return NULL;
  }
  struct job job = { .function = args->args[0], .function_len = args->lengths[0] };
  long long ident = args->args[1] != NULL ? *(long long *)args->args[1] : 0;
  char unique[MAX_UNIQUE + 1];
  int named = snprintf(unique, sizeof unique, "L%lld", ident);
  int len = snprintf(unique + named, sizeof unique - (size_t)named, ":%s", token);
  memset(token, 0, sizeof token);
  bool sent = false;
  if (job.function != NULL && job.function_len > 0 && ident > 0 &&
      row_name_ok(job.function, job.function_len, MAX_FUNCTION, "function", spec)) {
    job.unique = unique;
    job.unique_len = (size_t)(named + len);
    sent = submit(call, &job);
  }
  memset(unique + named, 0, sizeof unique - (size_t)named);
  call->len = 0; /* what submit() left there names the token: only L<id> is returned */
  if (!sent || !call_append(call, unique, (size_t)named))
    return NULL;
  *is_null = 0;
  *length = call->len;
  return call->buf;
}
