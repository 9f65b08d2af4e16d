/*
 * sum_answers.c: gman_sum's answers: each connection's packets read without waiting, or
 * waited for until the deadline; each job's result taken as an integer and summed.
 */
#include "sum.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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

int64_t sum_next_deadline(const struct sum_group *g)
{
  int64_t next = g->deadline;
  for (unsigned i = 0; i < MAX_SLOTS; i++)
    if (g->unacked[i] > 0 && g->ack_due[i] < next)
      next = g->ack_due[i];
  return next;
}

/*
 * Close every connection of the group: gearmand forgets its jobs no worker has started. A
 * server that acknowledged nothing for timeout_ms is stalled (backed off); jobs it accepted
 * but no worker answered in time are no fault of its.
 */
void sum_time_out(struct sum_group *g)
{
  int64_t now = now_ms();
  for (unsigned i = 0; i < MAX_SLOTS; i++) {
    if (g->unacked[i] > 0 && now >= g->ack_due[i]) {
      sum_fail(g, SF_SUBMIT_TIMED_OUT, (int)i, true, "%u jobs not acknowledged within "
               "timeout_ms=%d; server skipped for backoff_ms", g->unacked[i],
               g->config.timeout_ms);
      return;
    }
  }
  unsigned long long waiting = 0;
  for (uint64_t n = g->head; n < g->tail; n++)
    waiting += !g->jobs[n % SUM_IN_FLIGHT].done;
  sum_fail(g, SF_TIMED_OUT, SUM_NO_SLOT, false, "%llu jobs not answered within "
           "result_timeout_ms=%d, which bounds the whole group", waiting,
           config_result_wait_ms(&g->config));
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
    if (--g->unacked[i] > 0) /* gearmand is moving: the next one is due timeout_ms from now */
      g->ack_due[i] = now_ms() + g->config.timeout_ms;
    return;
  }
  if (p->type == ERROR_PACKET) {
    sum_fail(g, SF_SERVER, (int)i, true, "gearmand answered ERROR '%s'",
             packet_error_text(p, echo));
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
  struct packet p;
  int framed;
  while ((framed = packet_frame(c->in + c->in_start, c->in_end - c->in_start, SUM_PACKET_MAX,
                                &p)) > 0) {
    c->in_start += HEADER_SIZE + p.size;
    sum_packet(g, i, &p);
    if (g->state != SUM_RUNNING)
      return;
  }
  if (framed < 0) {
    sum_fail(g, SF_SERVER, (int)i, true, "not a Gearman answer, or one over %d bytes",
             SUM_PACKET_MAX);
    return;
  }
  if (c->in_start == c->in_end)
    c->in_start = c->in_end = 0;
}

/* Wait up to timeout ms for answers on the group's connections, and act on what came. */
static void sum_take_in(struct sum_group *g, int timeout)
{
  struct pollfd fds[MAX_SLOTS];
  unsigned slot[MAX_SLOTS], n = 0;
  for (unsigned i = 0; i < MAX_SLOTS; i++) {
    if (g->conns[i].fd >= 0) {
      fds[n] = (struct pollfd){ .fd = g->conns[i].fd, .events = POLLIN };
      slot[n++] = i;
    }
  }
  int ready = poll(fds, n, timeout);
  if (ready < 0 && errno != EINTR) {
    sum_fail(g, SF_NO_MEMORY, SUM_NO_SLOT, false, "cannot wait: %s", strerror(errno));
    return;
  }
  for (unsigned k = 0; ready > 0 && k < n && g->state == SUM_RUNNING; k++)
    if (fds[k].revents != 0)
      sum_receive(g, slot[k]);
}

void sum_wait(struct sum_group *g, enum sum_until until)
{
  if (until == UNTIL_NOTHING) {
    sum_take_in(g, 0);
    return;
  }
  while (g->state == SUM_RUNNING) {
    bool done = until == UNTIL_ROOM ? g->tail - g->head < SUM_IN_FLIGHT : g->head == g->tail;
    int64_t deadline = sum_next_deadline(g);
    if (now_ms() < deadline) {
      if (done)
        return;
      sum_take_in(g, ms_left(deadline));
      continue;
    }
    if (until == UNTIL_ALL && done)
      return; /* every answer is in: the sum stands */
    /* Past a deadline: first read what has come, since acknowledgements that waited in the
     * socket while the group was busy sending are no stall; then give up. Also when
     * packets keep coming (WORK_STATUS): they do not move the group's deadline. */
    sum_take_in(g, 0);
    if (g->state == SUM_RUNNING && !(until == UNTIL_ALL && g->head == g->tail) &&
        now_ms() >= sum_next_deadline(g))
      sum_time_out(g);
  }
}
