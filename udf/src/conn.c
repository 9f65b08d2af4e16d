/*
 * conn.c: connections to gearmand, each mysqld thread's own, and the socket I/O on them:
 * name lookup, connect, send and receive, every wait bounded by the call's deadline.
 * Thread states sit in a registry so that the library destructor can free them: MariaDB
 * unloads this library when the last function is dropped, and a thread that exits
 * afterwards must not call back into unmapped code.
 */
#include "conn.h"
#include "ship.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * g_registry_lock guards g_registry (every live thread's state) and g_key_ready, which
 * changes only in the constructor and destructor, when no UDF call can be running.
 * A thread's own state is found with pthread_getspecific(g_state_key); the key's
 * destructor frees it at thread exit, and the library destructor deletes the key
 * (so no destructor can run after unload) and frees whatever states remain.
 */
static pthread_mutex_t g_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thread_state *g_registry;
static bool g_key_ready;
static pthread_key_t g_state_key;

/* Close c and free its buffer (whatever was received is of no use to a new connection). */
void conn_close(struct conn *c)
{
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  free(c->in);
  c->in = NULL;
  c->in_start = c->in_end = c->in_cap = 0;
  c->owed = 0;
  ship_forget(c);
  free(c->out);
  c->out = NULL;
  c->out_len = c->out_cap = 0;
}

bool out_reserve(struct conn *c, size_t more)
{
  if (c->out_cap - c->out_len >= more)
    return true;
  size_t cap = c->out_cap ? c->out_cap : 4096;
  while (cap - c->out_len < more)
    cap *= 2;
  char *p = realloc(c->out, cap);
  if (p == NULL)
    return false;
  c->out = p;
  c->out_cap = cap;
  return true;
}

/* Close every connection of st; what its ships had not sent yet goes out first, as far as
 * the sockets take it without waiting. */
static void thread_state_close(struct thread_state *st)
{
  pthread_mutex_lock(&st->ship_lock);
  for (unsigned i = 0; i < MAX_SLOTS; i++) {
    conn_close(&st->conns[i]);
    if (st->ships[i].fd >= 0 && st->ships[i].out_len > 0)
      ship_send(&st->ships[i], now_ms());
    conn_close(&st->ships[i]);
  }
  pthread_mutex_unlock(&st->ship_lock);
}

static void thread_state_destroy(struct thread_state *st)
{
  thread_state_close(st);
  pthread_mutex_destroy(&st->ship_lock);
  free(st);
}

static void thread_state_free(void *p)
{
  struct thread_state *st = p;
  pthread_mutex_lock(&g_registry_lock);
  if (!g_key_ready) {
    /* This thread exits while the library unloads: threads_stop frees st. */
    pthread_mutex_unlock(&g_registry_lock);
    return;
  }
  if (st->prev)
    st->prev->next = st->next;
  else
    g_registry = st->next;
  if (st->next)
    st->next->prev = st->prev;
  pthread_mutex_unlock(&g_registry_lock);
  thread_state_destroy(st);
}

/* Called when the library loads, before any UDF can run. */
void threads_start(void)
{
  pthread_mutex_lock(&g_registry_lock);
  g_key_ready = pthread_key_create(&g_state_key, thread_state_free) == 0;
  pthread_mutex_unlock(&g_registry_lock);
}

/* Called when the library unloads: no thread exit may call back into unmapped code. */
void threads_stop(void)
{
  pthread_mutex_lock(&g_registry_lock);
  if (g_key_ready)
    pthread_key_delete(g_state_key);
  g_key_ready = false;
  struct thread_state *st = g_registry;
  g_registry = NULL;
  pthread_mutex_unlock(&g_registry_lock);
  while (st != NULL) {
    struct thread_state *next = st->next;
    thread_state_destroy(st);
    st = next;
  }
}

void threads_each(void (*fn)(struct thread_state *st, void *arg), void *arg)
{
  pthread_mutex_lock(&g_registry_lock);
  for (struct thread_state *st = g_registry; st != NULL; st = st->next)
    fn(st, arg);
  pthread_mutex_unlock(&g_registry_lock);
}

/* This thread's state, its config snapshot current; NULL only if out of memory. */
struct thread_state *thread_state_get(void)
{
  struct thread_state *st = g_key_ready ? pthread_getspecific(g_state_key) : NULL;
  if (st == NULL) {
    st = calloc(1, sizeof *st);
    if (st == NULL || pthread_mutex_init(&st->ship_lock, NULL) != 0) {
      free(st);
      return NULL;
    }
    if (!g_key_ready || pthread_setspecific(g_state_key, st) != 0) {
      pthread_mutex_destroy(&st->ship_lock);
      free(st);
      return NULL;
    }
    for (unsigned i = 0; i < MAX_SLOTS; i++)
      st->conns[i].fd = st->ships[i].fd = -1;
    pthread_mutex_lock(&g_registry_lock);
    st->next = g_registry;
    if (g_registry)
      g_registry->prev = st;
    g_registry = st;
    pthread_mutex_unlock(&g_registry_lock);
  }
  if (st->generation != config_generation()) {
    thread_state_close(st);
    config_snapshot(&st->config, &st->generation);
  }
  return st;
}

/* ---------------------------------------------------------------- the wire, within a deadline */

int ms_left(int64_t deadline)
{
  int64_t left = deadline - now_ms();
  return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

/* 1 when fd is ready for events (or has an error to report), 0 at the deadline. */
int wait_fd(int fd, short events, int64_t deadline)
{
  for (;;) {
    struct pollfd p = { .fd = fd, .events = events };
    int n = poll(&p, 1, ms_left(deadline));
    if (n >= 0)
      return n > 0;
    if (errno != EINTR)
      return 0; /* cannot wait (ENOMEM): as good as the deadline */
  }
}

/* A lookup that may outlive its caller: glibc's resolver thread writes into it. */
struct lookup {
  struct gaicb cb;
  struct addrinfo hints;
  char host[MAX_HOST];
  char port[8];
};

/*
 * The addresses of s, within the deadline. A numeric address never touches the resolver;
 * a name is looked up with getaddrinfo_a, so a slow DNS server costs this call its
 * deadline and no more. A lookup still running then is cancelled if glibc can, and left
 * to finish otherwise: its few hundred bytes are leaked, once per back-off at most.
 */
static enum io resolve(const struct server *s, int64_t deadline, struct addrinfo **out,
                       char *why, size_t size)
{
  char port[8];
  snprintf(port, sizeof port, "%u", s->port);
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV };
  int rc = getaddrinfo(s->host, port, &hints, out);
  if (rc == 0)
    return IO_OK;
  if (rc != EAI_NONAME) {
    snprintf(why, size, "%s", gai_strerror(rc));
    return IO_LOST;
  }

  struct lookup *l = calloc(1, sizeof *l);
  if (l == NULL)
    return IO_NO_MEMORY;
  snprintf(l->host, sizeof l->host, "%s", s->host);
  memcpy(l->port, port, sizeof port);
  l->hints.ai_socktype = SOCK_STREAM;
  l->hints.ai_flags = AI_NUMERICSERV;
  l->cb.ar_name = l->host;
  l->cb.ar_service = l->port;
  l->cb.ar_request = &l->hints;
  struct gaicb *list[1] = { &l->cb };
  rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
  if (rc != 0) {
    free(l);
    snprintf(why, size, "cannot look up the name: %s", gai_strerror(rc));
    return IO_LOST;
  }
  while (gai_error(&l->cb) == EAI_INPROGRESS) {
    int left = ms_left(deadline);
    struct timespec ts = { left / 1000, (long)(left % 1000) * 1000000L };
    rc = gai_suspend((const struct gaicb *const *)list, 1, &ts);
    if (rc == EAI_AGAIN && gai_error(&l->cb) == EAI_INPROGRESS) {
      if (gai_cancel(&l->cb) == EAI_NOTCANCELED)
        return IO_TIMEOUT; /* l belongs to the resolver thread now */
      if (gai_error(&l->cb) == 0)
        freeaddrinfo(l->cb.ar_result);
      free(l);
      return IO_TIMEOUT;
    }
  }
  rc = gai_error(&l->cb);
  *out = rc == 0 ? l->cb.ar_result : NULL;
  free(l);
  if (rc != 0) {
    snprintf(why, size, "cannot look up the name: %s", gai_strerror(rc));
    return IO_LOST;
  }
  return IO_OK;
}

/* Connect c to s; IO_LOST (a reason in why) if no address takes the connection. */
enum io conn_open(struct conn *c, const struct server *s, int64_t deadline,
                         char *why, size_t size)
{
  struct addrinfo *addresses;
  enum io r = resolve(s, deadline, &addresses, why, size);
  if (r != IO_OK)
    return r;
  int err = ECONNREFUSED;
  r = IO_LOST;
  for (struct addrinfo *ai = addresses; ai != NULL && r == IO_LOST; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      r = IO_OK;
    } else if (errno != EINPROGRESS) {
      err = errno;
    } else if (!wait_fd(fd, POLLOUT, deadline)) {
      r = IO_TIMEOUT;
    } else {
      socklen_t len = sizeof err;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
      if (err == 0)
        r = IO_OK;
    }
    if (r == IO_OK)
      c->fd = fd;
    else
      close(fd);
  }
  freeaddrinfo(addresses);
  if (r == IO_LOST)
    snprintf(why, size, "cannot connect: %s", strerror(err));
  return r;
}

/* Whether a kept connection was closed by the server (or holds bytes nobody asked for). */
bool conn_stale(const struct conn *c)
{
  struct pollfd p = { .fd = c->fd, .events = POLLIN };
  return poll(&p, 1, 0) != 0 || c->in_end != c->in_start;
}

/* Send every byte of iov[0..n), straight from the caller's buffers. */
enum io conn_send(struct conn *c, struct iovec *iov, int n, int64_t deadline)
{
  while (n > 0) {
    struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
    ssize_t sent = sendmsg(c->fd, &m, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return IO_LOST;
      if (!wait_fd(c->fd, POLLOUT, deadline))
        return IO_TIMEOUT;
      continue;
    }
    size_t left = (size_t)sent;
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
  return IO_OK;
}

/* Receive until in[in_start, in_start + want) is filled; the buffer grows to fit. */
enum io conn_fill(struct conn *c, size_t want, int64_t deadline)
{
  while (c->in_end - c->in_start < want) {
    if (c->in_cap - c->in_start < want) {
      size_t have = c->in_end - c->in_start;
      if (c->in_start > 0) {
        memmove(c->in, c->in + c->in_start, have);
        c->in_start = 0;
        c->in_end = have;
      }
      if (c->in_cap < want) {
        size_t cap = want < IN_BUFFER_MIN ? IN_BUFFER_MIN : want;
        char *p = realloc(c->in, cap);
        if (p == NULL)
          return IO_NO_MEMORY;
        c->in = p;
        c->in_cap = cap;
      }
    }
    /* With nothing received yet an answer is a round trip away: wait before reading. */
    if (c->in_end == c->in_start && !wait_fd(c->fd, POLLIN, deadline))
      return IO_TIMEOUT;
    ssize_t got = recv(c->fd, c->in + c->in_end, c->in_cap - c->in_end, 0);
    if (got > 0) {
      c->in_end += (size_t)got;
    } else if (got == 0) {
      return IO_LOST;
    } else if (errno != EINTR) {
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return IO_LOST;
      if (!wait_fd(c->fd, POLLIN, deadline))
        return IO_TIMEOUT;
    }
  }
  return IO_OK;
}

/* Connect c to s, the server of slot i, counted in the status as this thread's. */
enum io slot_open(struct thread_state *st, unsigned i, struct conn *c,
                         const struct server *s, int64_t deadline, char *why, size_t size)
{
  enum io r = conn_open(c, s, deadline, why, size);
  if (r == IO_OK) {
    bool *ever = c == &st->ships[i] ? &st->ever_shipped[i] : &st->ever_open[i];
    count(C_CONNECTIONS_OPENED);
    if (*ever)
      count(C_RECONNECTS);
    *ever = true;
  }
  return r;
}

