/*
 * sum.c: gman_sum(function, workload), an aggregate whose rows' jobs run side by side: the
 * group's life and its jobs' submission (their answers: sum_answers.c).
 */
#include "sum.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct rate_limit g_sum_log[SF_COUNT]; /* atomic fields: no lock */

static const struct udf_spec sum_spec = {
  "gman_sum(function, workload)", JOB_FOREGROUND, PRIORITY_NORMAL, false
};

/* Close the group's connections: gearmand drops its jobs that no worker has started. */
static void sum_abandon(struct sum_group *g)
{
  for (unsigned i = 0; i < MAX_SLOTS; i++)
    conn_close(&g->conns[i]);
}

void sum_fail(struct sum_group *g, enum sum_failure why, int slot, bool server_fault,
                     const char *fmt, ...)
{
  char text[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  char where[MAX_HOST + 16] = "";
  if (slot >= 0)
    snprintf(where, sizeof where, "%s:%u: ", g->config.slots[slot].host,
             g->config.slots[slot].port);
  UDF_LOG(&g_sum_log[why], "gman_sum('%s'): %s%s; the group gives NULL (jobs submitted: %llu)",
          g->function, where, text, (unsigned long long)g->tail);
  if (server_fault && slot >= 0)
    server_back_off((unsigned)slot, g->config.backoff_ms);
  if (why == SF_TIMED_OUT || why == SF_SUBMIT_TIMED_OUT)
    count(C_TIMED_OUT);
  count(C_FAILED);
  sum_abandon(g);
  g->state = SUM_FAILED;
}

/* The group ended in step: each connection with nothing of the group's left on it goes
 * back to the thread, for its next call; the others are closed. */
static void sum_give_back(struct sum_group *g)
{
  struct thread_state *st = thread_state_get();
  for (unsigned i = 0; i < MAX_SLOTS; i++) {
    struct conn *c = &g->conns[i];
    if (c->fd < 0)
      continue;
    if (st != NULL && st->generation == g->generation && st->conns[i].fd < 0 &&
        g->out[i] == 0 && c->in_start == c->in_end) {
      st->conns[i] = *c;
      *c = (struct conn){ .fd = -1 };
    } else {
      conn_close(c);
    }
  }
}

static bool sum_in_use(void *self, unsigned i)
{
  return ((struct sum_group *)self)->conns[i].fd >= 0;
}

/* Connection i for the group: its own, else the thread's if it has a live one. */
static struct conn *sum_take(void *self, unsigned i)
{
  struct sum_group *g = self;
  struct conn *c = &g->conns[i];
  struct thread_state *st = c->fd < 0 ? thread_state_get() : NULL;
  if (st != NULL && st->generation == g->generation && st->conns[i].fd >= 0) {
    *c = st->conns[i];
    st->conns[i] = (struct conn){ .fd = -1 };
    if (conn_stale(c))
      conn_close(c); /* gearmand restarted or closed it: nothing was sent on it yet */
  }
  return c;
}

/* Send the job on connection i, opened first if need be; its answers come later. */
static enum outcome sum_send(void *self, unsigned i, struct conn *c, char *why, size_t size)
{
  struct sum_group *g = self;
  enum io r = IO_OK;
  if (c->fd < 0) {
    struct thread_state *st = thread_state_get();
    r = st == NULL ? IO_NO_MEMORY : slot_open(st, i, c, &g->config.slots[i],
                                                g->submit_deadline, why, size);
    if (r == IO_LOST)
      return O_UNREACHABLE;
  }
  if (r == IO_OK)
    r = send_submit(c, &sum_spec, g->job, g->submit_deadline);
  switch (r) {
  case IO_OK:
    return O_OK;
  case IO_NO_MEMORY:
    return O_NO_MEMORY;
  case IO_TIMEOUT:
    return O_SERVER_TIMEOUT;
  default: /* the group's jobs out on it are lost with it */
    return g->out[i] > 0 ? O_LOST_AFTER_ACK : O_LOST_BEFORE_ACK;
  }
}

/* The setting that ends the row's submit: timeout_ms, unless the group's end comes first. */
static const char *sum_submit_bound(const struct sum_group *g, int *ms)
{
  bool group = g->submit_deadline == g->deadline;
  *ms = group ? config_result_wait_ms(&g->config) : g->config.timeout_ms;
  return group ? "result_timeout_ms" : "timeout_ms";
}

static void sum_failed(void *self, unsigned i, enum outcome o, const char *why, bool next)
{
  struct sum_group *g = self;
  const struct server *s = &g->config.slots[i];
  if (next)
    UDF_LOG(&g_server_log[i], "%s:%u: gman_sum('%s') %s%sserver skipped for backoff_ms",
            s->host, s->port, g->function, why, why[0] ? ": " : "");
  else if (o == O_NO_MEMORY)
    sum_fail(g, SF_NO_MEMORY, SUM_NO_SLOT, false, "out of memory");
  else if (o == O_SERVER_TIMEOUT) {
    int ms;
    const char *bound = sum_submit_bound(g, &ms);
    sum_fail(g, SF_SUBMIT_TIMED_OUT, (int)i, false, "%s%sno connection, or no room to send, "
             "within %s=%d", why, why[0] ? ": " : "", bound, ms);
  } else {
    sum_fail(g, SF_SERVER, (int)i, false, "%s%sconnection lost with jobs out (not submitted "
             "again)", why, why[0] ? ": " : "");
  }
}

/* Send job to the first server of its list that takes it (submit_route, as gman_do's). */
static void sum_submit(struct sum_group *g, const struct job *job)
{
  int64_t submit = now_ms() + g->config.timeout_ms;
  g->submit_deadline = submit < g->deadline ? submit : g->deadline;
  struct sender sender = {
    .self = g, .config = &g->config, .deadline = g->submit_deadline,
    .in_use = sum_in_use, .take = sum_take, .attempt = sum_send, .failed = sum_failed,
  };
  unsigned i = 0;
  g->job = job;
  enum outcome o = submit_route(&sender, job, &i);
  g->job = NULL;
  if (o == O_OK) {
    struct sum_job *slot = &g->jobs[g->tail++ % SUM_IN_FLIGHT];
    *slot = (struct sum_job){ .slot = (uint8_t)i };
    g->out[i]++;
    if (g->unacked[i]++ == 0)
      g->ack_due[i] = now_ms() + g->config.timeout_ms;
  } else if (o == O_DEADLINE) {
    int ms;
    const char *bound = sum_submit_bound(g, &ms);
    sum_fail(g, SF_SUBMIT_TIMED_OUT, SUM_NO_SLOT, false, "%s=%d passed before a server took "
             "the job", bound, ms);
  } else if (o == O_NO_SERVER) {
    sum_fail(g, SF_SERVER, SUM_NO_SLOT, false, "no server took the job");
  }
}

/* The group's first row: its configuration, its deadline (for the whole group). */
static bool sum_start(struct sum_group *g, const char *function, size_t function_len)
{
  struct thread_state *st = thread_state_get();
  shown(function, function_len, g->function);
  g->state = SUM_RUNNING;
  if (st == NULL) {
    sum_fail(g, SF_NO_MEMORY, SUM_NO_SLOT, false, "out of memory");
    return false;
  }
  if (g->generation != st->generation) {
    g->config = st->config;
    g->generation = st->generation;
  }
  g->deadline = now_ms() + config_result_wait_ms(&g->config);
  return true;
}

/* Forget the group (its jobs too, if nobody asked for its value): a new one begins. */
static void sum_reset(struct sum_group *g)
{
  sum_abandon(g);
  memset(g->out, 0, sizeof g->out);
  memset(g->unacked, 0, sizeof g->unacked);
  memset(g->ack_from, 0, sizeof g->ack_from);
  g->head = g->tail = 0;
  g->sum = 0;
  g->state = SUM_IDLE;
}

UDF_EXPORT udf_bool gman_sum_init(UDF_INIT *initid, UDF_ARGS *args, char *message)
{
  if (args->arg_count != 2) {
    init_error(message, sum_spec.usage, "expected 2 arguments, got %u", args->arg_count);
    return 1;
  }
  if (!function_arg_ok(sum_spec.usage, args, 0, message))
    return 1;
  args->arg_type[1] = STRING_RESULT;
  struct sum_group *g = calloc(1, sizeof *g);
  struct sum_job *jobs = calloc(SUM_IN_FLIGHT, sizeof *jobs);
  if (g == NULL || jobs == NULL) {
    free(g);
    free(jobs);
    init_error(message, sum_spec.usage, "out of memory");
    return 1;
  }
  for (unsigned i = 0; i < MAX_SLOTS; i++)
    g->conns[i].fd = -1;
  g->jobs = jobs;
  initid->ptr = (char *)g;
  initid->maybe_null = 1;
  initid->const_item = 0;
  initid->decimals = 0;
  initid->max_length = 21;
  config_refresh();
  return 0;
}

UDF_EXPORT void gman_sum_deinit(UDF_INIT *initid)
{
  struct sum_group *g = (struct sum_group *)initid->ptr;
  if (g != NULL) {
    sum_abandon(g);
    free(g->jobs);
    free(g);
    initid->ptr = NULL;
  }
}

/*
 * initid's group, or NULL if the statement's state is shared. WITH ROLLUP makes both servers
 * call the aggregate through copies of its UDF_INIT that carry the same ptr: every level's
 * rows and clears would land in one group, and the sums come out wrong. Calls from a second
 * UDF_INIT are how that shows, so from then on every value of the statement is NULL.
 */
static struct sum_group *sum_group_of(UDF_INIT *initid)
{
  struct sum_group *g = (struct sum_group *)initid->ptr;
  if (g->caller == NULL)
    g->caller = initid;
  if (g->caller == initid && !g->shared)
    return g;
  if (!g->shared) {
    g->shared = true;
    sum_reset(g);
    UDF_LOG(&g_sum_log[SF_SHARED], "gman_sum('%s'): called for two groups at once (WITH "
            "ROLLUP?), which would mix their rows; every group of the statement gives NULL",
            g->function);
    count(C_FAILED);
  }
  return NULL;
}

UDF_EXPORT void gman_sum_clear(UDF_INIT *initid, udf_flag *is_null, udf_flag *error)
{
  (void)is_null;
  (void)error;
  struct sum_group *g = sum_group_of(initid);
  if (g != NULL)
    sum_reset(g);
}

UDF_EXPORT void gman_sum_add(UDF_INIT *initid, UDF_ARGS *args, udf_flag *is_null,
                             udf_flag *error)
{
  struct sum_group *g = sum_group_of(initid);
  struct job job = {
    .function = args->args[0],
    .function_len = args->lengths[0],
    .workload = args->args[1],
    .workload_len = args->args[1] ? args->lengths[1] : 0,
  };
  const char *problem;
  char echo[41];
  (void)is_null;
  (void)error; /* a failed group is NULL, never an error: see the header comment */
  if (g == NULL || g->state == SUM_FAILED || g->state == SUM_DONE || job.function == NULL ||
      job.function_len == 0)
    return;
  if (g->state == SUM_IDLE && !sum_start(g, job.function, job.function_len))
    return;
  if ((problem = name_problem(job.function, job.function_len, MAX_FUNCTION)) != NULL) {
    sum_fail(g, SF_BAD_ROW, SUM_NO_SLOT, false, "function '%s' %s",
             shown(job.function, job.function_len, echo), problem);
    return;
  }
  if (job.workload_len > MAX_WORKLOAD) {
    sum_fail(g, SF_BAD_ROW, SUM_NO_SLOT, false, "a workload over 1 GiB");
    return;
  }
  sum_wait(g, UNTIL_ROOM); /* and gives up if a deadline has passed */
  if (g->state != SUM_RUNNING)
    return;
  unique_generate(g->unique);
  job.unique = g->unique;
  job.unique_len = GENERATED_UNIQUE_LEN;
  sum_submit(g, &job);
  sum_wait(g, UNTIL_NOTHING);
}

UDF_EXPORT long long gman_sum(UDF_INIT *initid, UDF_ARGS *args, udf_flag *is_null,
                              udf_flag *error)
{
  struct sum_group *g = sum_group_of(initid);
  (void)args;
  (void)error;
  if (g == NULL) {
    *is_null = 1;
    return 0;
  }
  if (g->state == SUM_RUNNING) {
    sum_wait(g, UNTIL_ALL);
    if (g->state == SUM_RUNNING) {
      g->state = SUM_DONE;
      sum_give_back(g);
    }
  }
  *is_null = g->state != SUM_DONE;
  return g->state == SUM_DONE ? g->sum : 0;
}

