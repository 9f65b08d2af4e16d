/*
 * ship.c: gman_ship's requests are not sent by the call. Each one goes into its connection's
 * buffer, and a flusher thread sends every thread's buffer SHIP_GATHER_US after the first
 * request of an idle moment: one send() carries the rows of a statement instead of one
 * each, and gearmand reads them at once. The acknowledgements are read by the thread's later
 * ships, as before (job_udfs.c).
 *
 * Nothing waits on the flusher: a buffer the socket will not take (gearmand stalled) stays
 * until timeout_ms has passed since the server last took any of it, then the connection is
 * dropped and the server backed off, and the ledger rows of its jobs ship again when their
 * lease ends, as for any job sent and never acknowledged.
 *
 * The flusher starts with the first request and sleeps on g_flush_cond while no buffer
 * holds any: a library loaded and unused costs no wake-ups.
 */
#include "submit.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* g_flush_lock guards the flusher's start and stop (the next three) and g_flush_cond's
 * waits. g_pending, the number of connections whose buffer holds requests, is atomic. */
static pthread_mutex_t g_flush_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_flush_cond = PTHREAD_COND_INITIALIZER;
static bool g_flusher_running;
static bool g_flusher_stop;
static pthread_t g_flusher;
static unsigned g_pending;

/* Write what the socket takes of c's buffer now, without waiting; IO_TIMEOUT if some is
 * left, IO_LOST if the connection is gone. */
static enum io out_write(struct conn *c)
{
  size_t sent = 0;
  enum io r = IO_OK;
  while (sent < c->out_len) {
    ssize_t n = send(c->fd, c->out + sent, c->out_len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      count(C_SHIP_SENDS);
      sent += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      r = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? IO_TIMEOUT : IO_LOST;
      break;
    }
  }
  if (sent == c->out_len) {
    c->out_len = 0;
    ship_forget(c);
    if (c->out_cap > SHIP_BUFFER_KEEP) { /* grown for a big workload: not kept */
      free(c->out);
      c->out = NULL;
      c->out_cap = 0;
    }
    return IO_OK;
  }
  if (sent > 0) { /* the server reads: its timeout_ms starts again */
    memmove(c->out, c->out + sent, c->out_len - sent);
    c->out_len -= sent;
    c->out_since = now_ms() | 1;
  }
  return r;
}

enum io ship_send(struct conn *c, int64_t deadline)
{
  for (;;) {
    enum io r = out_write(c);
    if (r != IO_TIMEOUT)
      return r;
    if (!wait_fd(c->fd, POLLOUT, deadline))
      return IO_TIMEOUT;
  }
}

void ship_forget(struct conn *c)
{
  if (c->out_since != 0) {
    c->out_since = 0;
    __atomic_sub_fetch(&g_pending, 1, __ATOMIC_RELEASE);
  }
}

/* The requests c's thread could not get to gearmand: counted, logged, and the connection
 * dropped (their ledger rows ship them again); a stalled server is backed off too. */
static void out_lost(struct thread_state *st, unsigned i, struct conn *c, bool stalled)
{
  const struct server *s = &st->config.slots[i];
  count_n(C_SHIP_UNACKNOWLEDGED, c->owed);
  UDF_LOG(&g_server_log[i], "%s:%u: %u jobs gman_ship sent were never acknowledged (%s); "
          "their ledger rows ship them again", s->host, s->port, c->owed,
          stalled ? "the server took none of them within timeout_ms; server skipped for "
                    "backoff_ms" : "connection lost");
  conn_close(c);
  if (stalled) {
    count(C_TIMED_OUT);
    server_back_off(i, st->config.backoff_ms);
  }
}

/* One flusher pass over a thread's buffers; a thread busy shipping is left for the next. */
static void flush_thread(struct thread_state *st, void *arg)
{
  int64_t now = *(const int64_t *)arg;
  if (pthread_mutex_trylock(&st->ship_lock) != 0)
    return;
  for (unsigned i = 0; i < MAX_SLOTS; i++) {
    struct conn *c = &st->ships[i];
    if (c->out_len == 0 || c->fd < 0)
      continue;
    int64_t since = c->out_since;
    enum io r = out_write(c);
    if (r == IO_LOST)
      out_lost(st, i, c, false);
    else if (r == IO_TIMEOUT && now - since >= st->config.timeout_ms)
      out_lost(st, i, c, true);
  }
  pthread_mutex_unlock(&st->ship_lock);
}

static void *flusher(void *unused)
{
  (void)unused;
  pthread_mutex_lock(&g_flush_lock);
  while (!g_flusher_stop) {
    if (__atomic_load_n(&g_pending, __ATOMIC_ACQUIRE) == 0) {
      pthread_cond_wait(&g_flush_cond, &g_flush_lock);
      continue;
    }
    pthread_mutex_unlock(&g_flush_lock);
    struct timespec gather = { 0, SHIP_GATHER_US * 1000L };
    nanosleep(&gather, NULL);
    int64_t now = now_ms();
    threads_each(flush_thread, &now);
    pthread_mutex_lock(&g_flush_lock);
  }
  pthread_mutex_unlock(&g_flush_lock);
  return NULL;
}

/* A buffer became non-empty: wake the flusher (start it the first time); false if there is
 * no flusher and none can be started. */
static bool flusher_wake(void)
{
  pthread_mutex_lock(&g_flush_lock);
  if (!g_flusher_running && !g_flusher_stop)
    __atomic_store_n(&g_flusher_running,
                     pthread_create(&g_flusher, NULL, flusher, NULL) == 0, __ATOMIC_RELEASE);
  bool ok = g_flusher_running && !g_flusher_stop;
  pthread_cond_signal(&g_flush_cond);
  pthread_mutex_unlock(&g_flush_lock);
  return ok;
}

enum io ship_append(struct conn *c, uint32_t type, const struct packet_args *args,
                    int64_t deadline)
{
  enum io r = packet_append(c, type, args);
  if (r != IO_OK || c->out_since != 0)
    return r;
  c->out_since = now_ms() | 1; /* 0 means empty */
  bool first = __atomic_fetch_add(&g_pending, 1, __ATOMIC_ACQ_REL) == 0;
  /* The flusher sleeps only while nothing is pending: the first buffer of an idle moment
   * wakes it. With no flusher thread (none could be started) every call sends its own. */
  if ((first || !__atomic_load_n(&g_flusher_running, __ATOMIC_ACQUIRE)) && !flusher_wake())
    return ship_send(c, deadline);
  return IO_OK;
}

void ship_stop(void)
{
  pthread_mutex_lock(&g_flush_lock);
  g_flusher_stop = true;
  bool running = g_flusher_running;
  pthread_cond_signal(&g_flush_cond);
  pthread_mutex_unlock(&g_flush_lock);
  if (running)
    pthread_join(g_flusher, NULL);
}
