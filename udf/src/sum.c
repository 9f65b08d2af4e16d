/*
 * sum.c: gman_sum(function, workload), an aggregate whose rows' jobs run side by side.
 */
#include "submit.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/*
 * gman_sum(function, workload) is an aggregate: mysqld calls gman_sum_clear when a group
 * begins, gman_sum_add for each of its rows and gman_sum for its value. Each row's job is
 * submitted as its row comes (a foreground job, its answer not waited for), so the group's
 * jobs run side by side on as many workers as there are; gman_sum then waits for the
 * answers still out and returns their sum.
 *
 * - The deadline is timeout_ms from the group's first row, for the whole group:
 *   submitting, waiting for room, every answer.
 * - At most SUM_IN_FLIGHT jobs are out, counted from the oldest one not answered yet; the
 *   row that would be one more waits for it. A group holds that many struct sum_job (about
 *   100 KB) however many rows it has, and gearmand no more of its jobs.
 * - A job that fails (WORK_FAIL, WORK_EXCEPTION, a function name gearmand could not take),
 *   a result that is not an integer, a sum beyond 64 bits, a lost connection or the
 *   deadline: the group's value is NULL, with a log line. No more of its rows are
 *   submitted and its connections are closed, so that gearmand drops the jobs of the
 *   group that no worker has started. A row whose function is NULL is left out, as SUM()
 *   leaves out NULL; a group without a job is NULL, as SUM() of nothing is.
 * - Connections: a group takes the thread's connection to each server it uses (or opens
 *   one) and gives it back when the group ends in step, so that another UDF of the same
 *   statement, as in gman_sum('f', gman_do('g', x)), never reads answers meant for it.
 * - gearmand answers the submits of one connection in order: a JOB_CREATED belongs to the
 *   oldest job on that connection still without a handle; WORK_* packets name theirs.
 * - WITH ROLLUP gives NULL for every group: see sum_group_of.
 */
#define SUM_IN_FLIGHT 1000
#define SUM_RESULT_MAX 32 /* a result's bytes: 20 for the integer, some for whitespace */
/* A larger answer is neither a handle nor an integer; a status or warning this large is
 * no worker of ours. Fits the connection's first buffer, header included. */
#define SUM_PACKET_MAX (IN_BUFFER_MIN - HEADER_SIZE)
#define SUM_NO_SLOT (-1) /* for a failure of no server in particular */

struct sum_job {
  uint8_t slot;       /* of the connection it went out on */
  uint8_t handle_len; /* 0 until its JOB_CREATED */
  uint8_t result_len;
  bool done;
  char handle[MAX_HANDLE];
  char result[SUM_RESULT_MAX];
};

enum sum_state { SUM_IDLE, SUM_RUNNING, SUM_DONE, SUM_FAILED };

/* Why a group gives NULL; each has a log line of its own, rate-limited apart. */
enum sum_failure {
  SF_JOB_FAILED, SF_NOT_INTEGER, SF_TIMED_OUT, SF_SERVER, SF_BAD_ROW, SF_NO_MEMORY, SF_SHARED,
  SF_COUNT
};
static struct rate_limit g_sum_log[SF_COUNT];

/* Per-statement state in initid->ptr: the group being summed. */
struct sum_group {
  struct config config; /* the snapshot the group's slots refer to */
  uint64_t generation;
  struct conn conns[MAX_SLOTS];
  unsigned out[MAX_SLOTS];       /* jobs out on each connection */
  uint64_t ack_from[MAX_SLOTS];  /* no job before this one waits for a JOB_CREATED there */
  struct sum_job *jobs;          /* job n of the group is jobs[n % SUM_IN_FLIGHT] */
  uint64_t head, tail;           /* jobs [head, tail) are out or answered out of order */
  enum sum_state state;
  int64_t deadline;
  long long sum;
  char function[41];             /* the first row's (its first 40 bytes), for log lines */
  UDF_INIT *caller;              /* the UDF_INIT of the first clear, add or value call */
  bool shared;                   /* another UDF_INIT called too: see sum_group_of */
  char unique[GENERATED_UNIQUE_LEN + 1];
};

static const struct udf_spec sum_spec = {
  "gman_sum(function, workload)", JOB_FOREGROUND, PRIORITY_NORMAL, false
};

/* A result as an integer: digits with an optional sign, whitespace around them allowed. */
static bool parse_integer(const char *s, size_t n, long long *out)
{
  size_t i = 0;
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
    i++;
  while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
    n--;
  bool negative = i < n && s[i] == '-';
  if (i < n && (s[i] == '-' || s[i] == '+'))
    i++;
  if (i == n)
    return false;
  unsigned long long limit = negative ? (unsigned long long)LLONG_MAX + 1 : LLONG_MAX, v = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (limit - d) / 10)
      return false;
    v = v * 10 + d;
  }
  *out = !negative ? (long long)v : v == limit ? LLONG_MIN : -(long long)v;
  return true;
}

/* Close every connection of the group: gearmand forgets its jobs no worker has started. */
static void sum_abandon(struct sum_group *g)
{
  for (unsigned i = 0; i < MAX_SLOTS; i++)
    conn_close(&g->conns[i]);
}

/* The group gives NULL: log why (at slot's server, unless SUM_NO_SLOT), stop. */
__attribute__((format(printf, 5, 6)))
static void sum_fail(struct sum_group *g, enum sum_failure why, int slot, bool server_fault,
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
  if (why == SF_TIMED_OUT)
    count(C_TIMED_OUT);
  count(C_FAILED);
  sum_abandon(g);
  g->state = SUM_FAILED;
}

/* The deadline has passed. A job gearmand never acknowledged is gearmand's fault (its
 * server is backed off); one acknowledged but not answered is not. */
static void sum_time_out(struct sum_group *g)
{
  int unacked = SUM_NO_SLOT;
  unsigned long long waiting = 0;
  for (uint64_t n = g->head; n < g->tail; n++) {
    const struct sum_job *job = &g->jobs[n % SUM_IN_FLIGHT];
    waiting += !job->done;
    if (!job->done && job->handle_len == 0 && unacked < 0)
      unacked = job->slot;
  }
  if (unacked >= 0)
    sum_fail(g, SF_TIMED_OUT, unacked, true, "a job not acknowledged within timeout_ms=%d; "
             "server skipped for backoff_ms", g->config.timeout_ms);
  else
    sum_fail(g, SF_TIMED_OUT, SUM_NO_SLOT, false, "%llu jobs not answered within "
             "timeout_ms=%d, which bounds the whole group", waiting, g->config.timeout_ms);
}

/* One answer on connection i. */
static void sum_packet(struct sum_group *g, unsigned i, const struct packet *p)
{
  char echo[41];
  if (p->type == JOB_CREATED) {
    uint64_t n = g->ack_from[i] > g->head ? g->ack_from[i] : g->head;
    while (n < g->tail && (g->jobs[n % SUM_IN_FLIGHT].slot != i ||
                           g->jobs[n % SUM_IN_FLIGHT].handle_len != 0))
      n++;
    if (n == g->tail || p->size == 0 || p->size > MAX_HANDLE) {
      sum_fail(g, SF_SERVER, (int)i, true, "a JOB_CREATED for no job of ours");
      return;
    }
    struct sum_job *job = &g->jobs[n % SUM_IN_FLIGHT];
    memcpy(job->handle, p->body, p->size);
    job->handle_len = (uint8_t)p->size;
    g->ack_from[i] = n + 1;
    return;
  }
  if (p->type == ERROR_PACKET) {
    const char *text = memchr(p->body, '\0', p->size);
    text = text ? text + 1 : p->body;
    sum_fail(g, SF_SERVER, (int)i, true, "gearmand answered ERROR '%s'",
             shown(text, p->size - (size_t)(text - p->body), echo));
    return;
  }
  if (p->type == WORK_STATUS || p->type == WORK_WARNING)
    return;
  if (p->type != WORK_DATA && p->type != WORK_COMPLETE && p->type != WORK_FAIL &&
      p->type != WORK_EXCEPTION) {
    sum_fail(g, SF_SERVER, (int)i, true, "packet type %u is no answer to a job", p->type);
    return;
  }
  const char *nul = memchr(p->body, '\0', p->size);
  size_t handle_len = nul ? (size_t)(nul - p->body) : p->size;
  uint64_t n = g->head;
  struct sum_job *job = NULL;
  for (; n < g->tail; n++) {
    job = &g->jobs[n % SUM_IN_FLIGHT];
    if (!job->done && job->slot == i && job->handle_len == handle_len && handle_len > 0 &&
        memcmp(job->handle, p->body, handle_len) == 0)
      break;
  }
  if (n == g->tail) {
    sum_fail(g, SF_SERVER, (int)i, true, "an answer about '%s', no job of ours",
             shown(p->body, handle_len, echo));
    return;
  }
  if (p->type == WORK_FAIL || p->type == WORK_EXCEPTION) {
    sum_fail(g, SF_JOB_FAILED, (int)i, false, "the worker failed job %llu of the group",
             (unsigned long long)n + 1);
    return;
  }
  size_t data_len = nul ? p->size - handle_len - 1 : 0;
  if (data_len > (size_t)(SUM_RESULT_MAX - job->result_len)) {
    sum_fail(g, SF_NOT_INTEGER, (int)i, false, "job %llu's result is over %d bytes, no "
             "integer", (unsigned long long)n + 1, SUM_RESULT_MAX);
    return;
  }
  memcpy(job->result + job->result_len, nul ? nul + 1 : p->body, data_len);
  job->result_len = (uint8_t)(job->result_len + data_len);
  if (p->type == WORK_DATA)
    return;
  long long v;
  if (!parse_integer(job->result, job->result_len, &v)) {
    sum_fail(g, SF_NOT_INTEGER, (int)i, false, "job %llu's result '%s' is not an integer",
             (unsigned long long)n + 1, shown(job->result, job->result_len, echo));
    return;
  }
  if (__builtin_add_overflow(g->sum, v, &g->sum)) {
    sum_fail(g, SF_NOT_INTEGER, (int)i, false, "the sum is beyond a signed 64-bit integer");
    return;
  }
  count(C_SUBMITTED);
  job->done = true;
  g->out[i]--;
  while (g->head < g->tail && g->jobs[g->head % SUM_IN_FLIGHT].done)
    g->head++;
}

/* Take in what connection i has received, without waiting, and act on each whole answer. */
static void sum_receive(struct sum_group *g, unsigned i)
{
  struct conn *c = &g->conns[i];
  if (c->in_start > 0) {
    memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
    c->in_end -= c->in_start;
    c->in_start = 0;
  }
  if (c->in_cap < IN_BUFFER_MIN) {
    char *bigger = realloc(c->in, IN_BUFFER_MIN);
    if (bigger == NULL) {
      sum_fail(g, SF_NO_MEMORY, SUM_NO_SLOT, false, "out of memory");
      return;
    }
    c->in = bigger;
    c->in_cap = IN_BUFFER_MIN;
  }
  ssize_t got = recv(c->fd, c->in + c->in_end, c->in_cap - c->in_end, MSG_DONTWAIT);
  if (got <= 0) {
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      return;
    sum_fail(g, SF_SERVER, (int)i, true, "connection lost with %u jobs out (not submitted "
             "again)", g->out[i]);
    return;
  }
  c->in_end += (size_t)got;
  while (c->in_end - c->in_start >= HEADER_SIZE) {
    const char *h = c->in + c->in_start;
    struct packet p = { get_be32(h + 4), h + HEADER_SIZE, get_be32(h + 8) };
    if (memcmp(h, "\0RES", 4) != 0 || p.size > SUM_PACKET_MAX) {
      sum_fail(g, SF_SERVER, (int)i, true, "not a Gearman answer, or one over %d bytes",
               SUM_PACKET_MAX);
      return;
    }
    if (c->in_end - c->in_start < HEADER_SIZE + p.size)
      break;
    c->in_start += HEADER_SIZE + p.size;
    sum_packet(g, i, &p);
    if (g->state != SUM_RUNNING)
      return;
  }
  if (c->in_start == c->in_end)
    c->in_start = c->in_end = 0;
}

enum sum_until { UNTIL_NOTHING, UNTIL_ROOM, UNTIL_ALL };

/* Act on the answers of every connection of the group: those already there (UNTIL_NOTHING),
 * or until a job more may go out (UNTIL_ROOM) or every job is answered (UNTIL_ALL). */
static void sum_wait(struct sum_group *g, enum sum_until until)
{
  while (g->state == SUM_RUNNING) {
    if ((until == UNTIL_ROOM && g->tail - g->head < SUM_IN_FLIGHT) ||
        (until == UNTIL_ALL && g->head == g->tail))
      return;
    struct pollfd fds[MAX_SLOTS];
    unsigned slot[MAX_SLOTS], n = 0;
    for (unsigned i = 0; i < MAX_SLOTS; i++) {
      if (g->conns[i].fd >= 0) {
        fds[n] = (struct pollfd){ .fd = g->conns[i].fd, .events = POLLIN };
        slot[n++] = i;
      }
    }
    int ready = poll(fds, n, until == UNTIL_NOTHING ? 0 : ms_left(g->deadline));
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready < 0) {
      sum_fail(g, SF_NO_MEMORY, SUM_NO_SLOT, false, "cannot wait: %s", strerror(errno));
      return;
    }
    if (ready == 0 && until != UNTIL_NOTHING) {
      sum_time_out(g);
      return;
    }
    for (unsigned k = 0; k < n && g->state == SUM_RUNNING; k++)
      if (fds[k].revents != 0)
        sum_receive(g, slot[k]);
    if (until == UNTIL_NOTHING)
      return;
  }
}

/* Connection i for the group: the thread's own if it has a live one, else a new one. */
static enum io sum_connect(struct sum_group *g, unsigned i, bool *reused, char *why,
                           size_t size)
{
  struct conn *c = &g->conns[i];
  struct thread_state *st = thread_state_get();
  if (st == NULL)
    return IO_NO_MEMORY;
  *reused = false;
  if (st->generation == g->generation && st->conns[i].fd >= 0) {
    *c = st->conns[i];
    st->conns[i] = (struct conn){ .fd = -1 };
    *reused = !conn_stale(c);
    if (!*reused)
      conn_close(c); /* gearmand restarted or closed it: nothing was sent on it yet */
  }
  if (c->fd >= 0)
    return IO_OK;
  return slot_open(st, i, c, &g->config.slots[i], g->deadline, why, size);
}

/* Give each connection back to the thread if the group ended in step on it, else close. */
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

/* Send job to the first server of its list that takes it, as submit() would. */
static void sum_submit(struct sum_group *g, const struct job *job)
{
  const struct server_list *list =
      config_servers_for(&g->config, job->function, job->function_len);
  for (unsigned k = 0; k < list->n; k++) {
    unsigned i = list->slot[k];
    struct conn *c = &g->conns[i];
    const struct server *s = &g->config.slots[i];
    char why[160] = "";
    bool reused = true;
    enum io r = IO_OK;
    if (c->fd < 0) {
      if (server_backed_off(i)) {
        count(C_SKIPPED_BACKOFF);
        continue;
      }
      r = sum_connect(g, i, &reused, why, sizeof why);
    }
    if (r == IO_OK)
      r = send_submit(c, &sum_spec, job, g->deadline);
    if (r == IO_LOST && reused && g->out[i] == 0) {
      conn_close(c); /* lost between the check and the send: one more, on a new one */
      count(C_RESUBMITTED);
      r = sum_connect(g, i, &reused, why, sizeof why);
      if (r == IO_OK)
        r = send_submit(c, &sum_spec, job, g->deadline);
    }
    if (r == IO_OK) {
      struct sum_job *slot = &g->jobs[g->tail++ % SUM_IN_FLIGHT];
      *slot = (struct sum_job){ .slot = (uint8_t)i };
      g->out[i]++;
      return;
    }
    if (r == IO_NO_MEMORY) {
      sum_fail(g, SF_NO_MEMORY, SUM_NO_SLOT, false, "out of memory");
      return;
    }
    if (r == IO_TIMEOUT || g->out[i] > 0) {
      sum_fail(g, r == IO_TIMEOUT ? SF_TIMED_OUT : SF_SERVER, (int)i, true, "%s%s%s", why,
               why[0] ? ": " : "",
               r == IO_TIMEOUT ? "no connection, or no room to send, within timeout_ms"
                               : "connection lost with jobs out (not submitted again)");
      return;
    }
    /* Nothing of the group's is lost: the job goes on to the next server. */
    conn_close(c);
    server_back_off(i, g->config.backoff_ms);
    UDF_LOG(&g_server_log[i], "%s:%u: gman_sum('%s') %s%sserver skipped for backoff_ms", s->host,
            s->port, g->function, why, why[0] ? ": " : "");
  }
  sum_fail(g, SF_SERVER, SUM_NO_SLOT, false, "no server took the job");
}

/* The group's first row: its configuration, its deadline. */
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
  g->deadline = now_ms() + g->config.timeout_ms;
  return true;
}

/* Forget the group (its jobs too, if nobody asked for its value): a new one begins. */
static void sum_reset(struct sum_group *g)
{
  sum_abandon(g);
  memset(g->out, 0, sizeof g->out);
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
  if (now_ms() >= g->deadline) {
    sum_time_out(g);
    return;
  }
  sum_wait(g, UNTIL_ROOM);
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

