/*
 * test_driver.c: calls gearman_udf.so's entry points the way mysqld does (dlopen, then
 * init/row/deinit per statement), without a mysqld. Run by `make -C udf test` under
 * valgrind; prints one "ok"/"not ok" line per check and a last line "N passed, M failed".
 *
 *   test_driver SO_PATH GEARMAN_PORT SCRATCH_DIR
 *
 * GEARMAN_PORT is a running gearmand (with a persistent queue, for epoch jobs); the
 * driver writes its own config file in SCRATCH_DIR and points GEARMAN_UDF_CONFIG at it.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <mysql.h>
#include <libgearman/gearman.h>

typedef char udf_bool;
typedef udf_bool (*init_fn)(UDF_INIT *, UDF_ARGS *, char *);
typedef void (*deinit_fn)(UDF_INIT *);
typedef char *(*row_fn)(UDF_INIT *, UDF_ARGS *, char *, unsigned long *, char *, char *);
typedef void (*clear_fn)(UDF_INIT *, char *, char *);
typedef void (*add_fn)(UDF_INIT *, UDF_ARGS *, char *, char *);
typedef long long (*longlong_fn)(UDF_INIT *, UDF_ARGS *, char *, char *);

#define MAX_ARGS 5
/* The library stats its config at most once a second (its CONFIG_CHECK_EVERY_MS). */
#define CONFIG_CHECK_EVERY_MS 1000
#define CONFIG_DEADLINE_MS 10000

static int passed, failed;
static const char *so_path, *scratch;
static int gearman_port;
static char config_file[512];
static void *lib;

static void check(bool ok, const char *what)
{
  if (ok)
    passed++;
  else
    failed++;
  printf("%s %d - %s\n", ok ? "ok" : "not ok", passed + failed, what);
  fflush(stdout);
}

/*
 * The monotonic clock of the whole process, the library's included: the driver exports this
 * clock_gettime (see the Makefile), so the library's calls land here. It runs clock_skew_ns
 * ahead of the kernel's. After a change to the config file the driver moves it on by the
 * library's check interval, in place of sleeping that long: to the library it is as if that
 * second had passed. It moves only between calls, so no deadline of a call spans a move.
 */
static long long clock_skew_ns; /* atomic */

int clock_gettime(clockid_t clock, struct timespec *ts)
{
  if (syscall(SYS_clock_gettime, clock, ts) != 0)
    return -1;
  long long skew = __atomic_load_n(&clock_skew_ns, __ATOMIC_RELAXED);
  if (skew != 0 && (clock == CLOCK_MONOTONIC || clock == CLOCK_MONOTONIC_COARSE ||
                    clock == CLOCK_MONOTONIC_RAW || clock == CLOCK_BOOTTIME)) {
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + skew;
    ts->tv_sec = (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
  }
  return 0;
}

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------ calling a UDF */

struct arg {
  enum Item_result type;
  const void *value; /* NULL: SQL NULL */
  unsigned long length;
  const char *name;  /* its SQL text; NULL: a literal written as 'value' or digits */
};

#define STR(s) ((struct arg){ STRING_RESULT, (s), sizeof(s) - 1, NULL })
#define BYTES(p, n) ((struct arg){ STRING_RESULT, (p), (n), NULL })
#define NUL_ARG ((struct arg){ STRING_RESULT, NULL, 0, NULL })
/* A value mysqld gives xxx_init although it is no literal: NEW.col inside a trigger. */
#define COLUMN(s) ((struct arg){ STRING_RESULT, (s), sizeof(s) - 1, "NEW.col" })

/* UDF_ARGS as mysqld passes it, with the argument names (see gearman_udf.c). */
struct full_args {
  UDF_ARGS a;
  char **attributes;
  unsigned long *attribute_lengths;
  void *extension;
};

struct result {
  bool init_failed;
  char message[MYSQL_ERRMSG_SIZE];
  bool is_null;
  char bytes[4096];
  unsigned long length;
};

/* One statement of one row: init with constant arguments, one row, deinit. */
static struct result call(const char *name, unsigned n, const struct arg *argv)
{
  struct result r;
  memset(&r, 0, sizeof r);
  char sym[128];
  init_fn init;
  deinit_fn deinit;
  snprintf(sym, sizeof sym, "%s_init", name);
  *(void **)&init = dlsym(lib, sym);
  snprintf(sym, sizeof sym, "%s_deinit", name);
  *(void **)&deinit = dlsym(lib, sym);
  row_fn row;
  *(void **)&row = dlsym(lib, name);
  if (!init || !deinit || !row) {
    snprintf(r.message, sizeof r.message, "missing symbol for %s", name);
    r.init_failed = true;
    return r;
  }

  enum Item_result types[MAX_ARGS];
  char *values[MAX_ARGS];
  unsigned long lengths[MAX_ARGS];
  char maybe_null[MAX_ARGS];
  long long ints[MAX_ARGS];
  char *names[MAX_ARGS];
  unsigned long name_lengths[MAX_ARGS];
  char quoted[MAX_ARGS][256];
  for (unsigned i = 0; i < n; i++) {
    types[i] = argv[i].type;
    values[i] = (char *)argv[i].value;
    lengths[i] = argv[i].length;
    maybe_null[i] = 1;
    if (argv[i].name || !argv[i].value || argv[i].type != STRING_RESULT)
      snprintf(quoted[i], sizeof quoted[i], "%s",
               argv[i].name ? argv[i].name : argv[i].value ? (const char *)argv[i].value : "NULL");
    else
      snprintf(quoted[i], sizeof quoted[i], "'%.*s'", (int)argv[i].length,
               (const char *)argv[i].value);
    names[i] = quoted[i];
    name_lengths[i] = strlen(quoted[i]);
    /* Like mysqld, init sees a constant number as a binary long long. */
    if (argv[i].type == INT_RESULT && argv[i].value) {
      ints[i] = atoll(argv[i].value);
      values[i] = (char *)&ints[i];
      lengths[i] = sizeof ints[i];
    }
  }
  struct full_args full = { { n, types, values, lengths, maybe_null }, names, name_lengths,
                            NULL };
  UDF_INIT initid;
  memset(&initid, 0, sizeof initid);
  if (init(&initid, &full.a, r.message)) {
    r.init_failed = true;
    return r;
  }
  /* mysqld converts each argument to the type init asked for; the tests pass those. */
  for (unsigned i = 0; i < n; i++) {
    if (!argv[i].value)
      continue;
    if (types[i] == INT_RESULT && argv[i].type != INT_RESULT) {
      ints[i] = atoll(argv[i].value);
      values[i] = (char *)&ints[i];
    } else if (types[i] == STRING_RESULT && argv[i].type == INT_RESULT) {
      values[i] = (char *)argv[i].value; /* the digits */
      lengths[i] = argv[i].length;
    }
  }
  char buf[256];
  char is_null = 0, error = 0;
  unsigned long length = 0;
  char *out = row(&initid, &full.a, buf, &length, &is_null, &error);
  r.is_null = is_null || out == NULL;
  if (!r.is_null) {
    r.length = length < sizeof r.bytes ? length : sizeof r.bytes;
    memcpy(r.bytes, out, r.length);
  }
  deinit(&initid);
  return r;
}

static struct result call2(const char *name, struct arg a, struct arg b)
{
  struct arg v[] = { a, b };
  return call(name, 2, v);
}

static struct result call3(const char *name, struct arg a, struct arg b, struct arg c)
{
  struct arg v[] = { a, b, c };
  return call(name, 3, v);
}

static unsigned long long counter(const char *name)
{
  struct result r = call("gman_udf_status", 0, NULL);
  char key[64];
  snprintf(key, sizeof key, "\"%s\":", name);
  r.bytes[r.length < sizeof r.bytes ? r.length : sizeof r.bytes - 1] = '\0';
  const char *p = strstr(r.bytes, key);
  return p ? strtoull(p + strlen(key), NULL, 10) : ~0ULL;
}

static bool status_has(const char *needle)
{
  struct result r = call("gman_udf_status", 0, NULL);
  r.bytes[r.length < sizeof r.bytes ? r.length : sizeof r.bytes - 1] = '\0';
  return strstr(r.bytes, needle) != NULL;
}

/* gman_udf_status()'s config_generation: it moves on each time the library takes up its
 * config anew (and when gman_servers_set() sets servers). */
static unsigned long long config_generation(void)
{
  return counter("config_generation");
}

/* After a change to the config file (or its path) made since config_generation() said
 * before: move the clock on by the library's check interval, then poll until the library has
 * read the change; past the deadline the change counts as a failed check. */
static void await_config(unsigned long long before, const char *change)
{
  __atomic_add_fetch(&clock_skew_ns, CONFIG_CHECK_EVERY_MS * 1000000LL, __ATOMIC_RELAXED);
  double deadline = now_ms() + CONFIG_DEADLINE_MS;
  for (;;) {
    unsigned long long now = config_generation();
    if (now != ~0ULL && now > before)
      return;
    if (now == ~0ULL || now_ms() > deadline) {
      char what[160];
      snprintf(what, sizeof what, "the library reads its config again after %s", change);
      check(false, what);
      return;
    }
    usleep(20000);
  }
}

/* Replace the config file (a new inode, never a half-written file), and once the library is
 * loaded, wait until it has read it. */
static void write_config(const char *text)
{
  unsigned long long before = lib ? config_generation() : 0;
  char staging[sizeof config_file + 8];
  snprintf(staging, sizeof staging, "%s.new", config_file);
  FILE *f = fopen(staging, "w");
  if (f == NULL || fputs(text, f) == EOF || fclose(f) != 0 || rename(staging, config_file)) {
    perror(staging);
    exit(2);
  }
  if (lib)
    await_config(before, "a new file");
}

static bool message_has(struct result r, const char *needle)
{
  return r.init_failed && strstr(r.message, needle) != NULL;
}

/* ------------------------------------------------------------ a worker in a thread */

/* The worker's last background workload; guarded by seen_lock. */
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static char seen[1024];
static size_t seen_len;
static int seen_count;
static bool worker_stop; /* atomic: set by main when the worker thread should end */

static void *echo_fn(gearman_job_st *job, void *ctx, size_t *size, gearman_return_t *ret)
{
  (void)ctx;
  size_t n = gearman_job_workload_size(job);
  char *out = malloc(n + 5);
  memcpy(out, "echo:", 5);
  memcpy(out + 5, gearman_job_workload(job), n);
  *size = n + 5;
  *ret = GEARMAN_SUCCESS;
  return out;
}

static int fail_runs; /* atomic: how often fail_fn ran */

static void *fail_fn(gearman_job_st *job, void *ctx, size_t *size, gearman_return_t *ret)
{
  (void)job;
  (void)ctx;
  __atomic_add_fetch(&fail_runs, 1, __ATOMIC_RELAXED);
  *size = 0;
  *ret = GEARMAN_WORK_FAIL;
  return NULL;
}

/* What a recording job saw, kept for the test to compare. */
static void *seen_now(const void *p, size_t n, size_t *size, gearman_return_t *ret)
{
  pthread_mutex_lock(&seen_lock);
  seen_len = n < sizeof seen ? n : sizeof seen;
  memcpy(seen, p, seen_len);
  seen_count++;
  pthread_mutex_unlock(&seen_lock);
  *size = 0;
  *ret = GEARMAN_SUCCESS;
  return NULL;
}

static void *record_fn(gearman_job_st *job, void *ctx, size_t *size, gearman_return_t *ret)
{
  (void)ctx;
  return seen_now(gearman_job_workload(job), gearman_job_workload_size(job), size, ret);
}

/* Records the job's unique instead of its workload (gman_ship_ledger's names the row). */
static void *unique_fn(gearman_job_st *job, void *ctx, size_t *size, gearman_return_t *ret)
{
  (void)ctx;
  return seen_now(gearman_job_unique(job), strlen(gearman_job_unique(job)), size, ret);
}

/* "n" -> "2n\n", as a program printing its answer would. */
static void *double_fn(gearman_job_st *job, void *ctx, size_t *size, gearman_return_t *ret)
{
  (void)ctx;
  char number[32];
  size_t n = gearman_job_workload_size(job);
  snprintf(number, sizeof number, "%.*s", (int)(n < 31 ? n : 31),
           (const char *)gearman_job_workload(job));
  char *out = malloc(32);
  *size = (size_t)snprintf(out, 32, "%lld\n", 2 * atoll(number));
  *ret = GEARMAN_SUCCESS;
  return out;
}

/* "n" -> "n" after n ms: a job that takes longer than the submit deadline. */
static void *nap_fn(gearman_job_st *job, void *ctx, size_t *size, gearman_return_t *ret)
{
  (void)ctx;
  char number[32];
  size_t n = gearman_job_workload_size(job);
  snprintf(number, sizeof number, "%.*s", (int)(n < 31 ? n : 31),
           (const char *)gearman_job_workload(job));
  usleep((useconds_t)atoi(number) * 1000);
  char *out = malloc(32);
  *size = (size_t)snprintf(out, 32, "%d", atoi(number));
  *ret = GEARMAN_SUCCESS;
  return out;
}

static void *worker_main(void *unused)
{
  (void)unused;
  gearman_worker_st *w = gearman_worker_create(NULL);
  gearman_worker_add_server(w, "127.0.0.1", (in_port_t)gearman_port);
  gearman_worker_set_timeout(w, 100);
  gearman_worker_add_function(w, "driver_echo", 0, echo_fn, NULL);
  gearman_worker_add_function(w, "driver_fail", 0, fail_fn, NULL);
  gearman_worker_add_function(w, "driver_record", 0, record_fn, NULL);
  gearman_worker_add_function(w, "driver_unique", 0, unique_fn, NULL);
  gearman_worker_add_function(w, "driver_double", 0, double_fn, NULL);
  gearman_worker_add_function(w, "driver_nap", 0, nap_fn, NULL);
  while (!__atomic_load_n(&worker_stop, __ATOMIC_RELAXED))
    gearman_worker_work(w);
  gearman_worker_free(w);
  return NULL;
}

static bool wait_seen(int count)
{
  for (int i = 0; i < 100; i++) {
    pthread_mutex_lock(&seen_lock);
    bool done = seen_count >= count;
    pthread_mutex_unlock(&seen_lock);
    if (done)
      return true;
    usleep(50000);
  }
  return false;
}

static bool seen_equals(const void *p, size_t n)
{
  pthread_mutex_lock(&seen_lock);
  bool same = seen_len == n && memcmp(seen, p, n) == 0;
  pthread_mutex_unlock(&seen_lock);
  return same;
}

/* ------------------------------------------------------------ sockets for failure paths */

/* A listening socket on a free port; with backlog, it completes handshakes it never reads. */
static int listen_any(int *port)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    perror("listen");
    exit(2);
  }
  *port = ntohs(a.sin_port);
  return fd;
}

static int closed_port(void)
{
  int port;
  close(listen_any(&port));
  return port;
}

/*
 * A scripted gearmand: it reads each request packet and answers as told, on every
 * connection, until stopped. Enough protocol to put the library's paths to the test.
 */
enum fake_mode {
  FAKE_STATUS_FOREVER, /* JOB_CREATED, then WORK_STATUS every 50 ms */
  FAKE_DATA_FOREVER,   /* JOB_CREATED, then 4 KB of WORK_DATA every 50 ms */
  FAKE_CLOSE,          /* closes the connection without an answer */
  FAKE_ERROR,          /* ERROR, as gearmand answers when its queue is full */
  FAKE_GARBAGE,        /* bytes that are no Gearman packet */
  FAKE_ACK_ONLY,       /* JOB_CREATED for every request, and nothing more */
  FAKE_SILENT,         /* reads every request and answers none: a stalled gearmand */
  FAKE_DEAF,           /* takes the connection and reads nothing: a hung gearmand */
};

struct fake {
  enum fake_mode mode;
  int listener, port;
  int requests; /* atomic: request packets read */
  bool stop;    /* atomic */
  pthread_t thread;
};

static void put32(unsigned char *p, unsigned v)
{
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

static bool fake_send(int fd, unsigned type, const void *body, size_t n)
{
  unsigned char head[12] = { 0, 'R', 'E', 'S' };
  put32(head + 4, type);
  put32(head + 8, (unsigned)n);
  return send(fd, head, 12, MSG_NOSIGNAL) == 12 &&
         (n == 0 || send(fd, body, n, MSG_NOSIGNAL) == (ssize_t)n);
}

/* Read one whole request; false at EOF or when stopped. */
static bool fake_read_request(struct fake *f, int fd)
{
  unsigned char head[12];
  size_t have = 0, size = 0;
  bool in_body = false;
  char chunk[65536];
  while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll(&p, 1, 50) <= 0)
      continue;
    size_t want = in_body ? size - have : 12 - have;
    if (want > sizeof chunk)
      want = sizeof chunk;
    ssize_t got = recv(fd, in_body ? (void *)chunk : (void *)(head + have), want, 0);
    if (got <= 0)
      return false;
    have += (size_t)got;
    if (!in_body && have == 12) {
      size = (size_t)head[8] << 24 | (size_t)head[9] << 16 | (size_t)head[10] << 8 | head[11];
      in_body = true;
      have = 0;
    }
    if (in_body && have == size) {
      __atomic_add_fetch(&f->requests, 1, __ATOMIC_RELAXED);
      return true;
    }
  }
  return false;
}

static void fake_serve(struct fake *f, int fd)
{
  if (f->mode == FAKE_DEAF) {
    while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED))
      usleep(20000);
    return;
  }
  static const char handle[] = "H:fake:1";
  char body[4096 + sizeof handle];
  memcpy(body, handle, sizeof handle); /* with its NUL: "handle\0data" */
  memset(body + sizeof handle, 'd', sizeof body - sizeof handle);
  while (fake_read_request(f, fd)) {
    switch (f->mode) {
    case FAKE_CLOSE:
      return;
    case FAKE_ERROR:
      fake_send(fd, 19, "QUEUE_ERROR\0Job queue is full", 29);
      continue;
    case FAKE_GARBAGE:
      send(fd, "HTTP/1.0 400 Bad Request\r\n\r\n", 28, MSG_NOSIGNAL);
      continue;
    case FAKE_SILENT:
    case FAKE_DEAF:
      continue;
    case FAKE_ACK_ONLY: {
      char numbered[32];
      int n = snprintf(numbered, sizeof numbered, "H:fake:%d",
                       __atomic_load_n(&f->requests, __ATOMIC_RELAXED));
      if (!fake_send(fd, 8, numbered, (size_t)n))
        return;
      continue;
    }
    case FAKE_STATUS_FOREVER:
    case FAKE_DATA_FOREVER:
      if (!fake_send(fd, 8, handle, sizeof handle - 1))
        return;
      while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
        bool sent = f->mode == FAKE_STATUS_FOREVER
                        ? fake_send(fd, 12, "H:fake:1\0" "1\0" "2", 12)
                        : fake_send(fd, 28, body, sizeof body);
        if (!sent)
          return; /* the caller gave up and closed the connection */
        usleep(50000);
      }
      return;
    }
  }
}

static void *fake_main(void *p)
{
  struct fake *f = p;
  while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
    struct pollfd pl = { f->listener, POLLIN, 0 };
    if (poll(&pl, 1, 50) <= 0)
      continue;
    int fd = accept(f->listener, NULL, NULL);
    if (fd < 0)
      continue;
    fake_serve(f, fd);
    close(fd);
  }
  return NULL;
}

static void fake_start(struct fake *f, enum fake_mode mode)
{
  memset(f, 0, sizeof *f);
  f->mode = mode;
  f->listener = listen_any(&f->port);
  pthread_create(&f->thread, NULL, fake_main, f);
}

static int fake_stop(struct fake *f)
{
  __atomic_store_n(&f->stop, true, __ATOMIC_RELAXED);
  pthread_join(f->thread, NULL);
  close(f->listener);
  return __atomic_load_n(&f->requests, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ threads across unload */

static pthread_barrier_t submitted_barrier, release_barrier;

static void *session_main(void *unused)
{
  (void)unused;
  for (int i = 0; i < 20; i++)
    call2("gman_do_background", STR("driver_none"), STR("from a thread"));
  pthread_barrier_wait(&submitted_barrier);
  pthread_barrier_wait(&release_barrier); /* the library is unloaded meanwhile */
  return NULL;
}

static bool library_mapped(void)
{
  FILE *f = fopen("/proc/self/maps", "r");
  char line[1024];
  bool found = false;
  while (f && fgets(line, sizeof line, f))
    found = found || strstr(line, "gearman_udf.so") != NULL;
  if (f)
    fclose(f);
  return found;
}

/* ------------------------------------------------------------ an aggregate statement */

/* gman_sum(function, id) over groups of rows, called as mysqld calls an aggregate. */
struct sum_stmt {
  UDF_INIT initid;
  struct full_args full;
  enum Item_result types[2];
  char *values[2];
  unsigned long lengths[2];
  char maybe_null[2];
  char *names[2];
  unsigned long name_lengths[2];
  char workload[32];
  char message[MYSQL_ERRMSG_SIZE];
  init_fn init;
  deinit_fn deinit;
  clear_fn clear;
  add_fn add;
  longlong_fn value;
};

/* init with function as the first argument (a literal, or a column if name is set). */
static bool sum_open(struct sum_stmt *st, struct arg function)
{
  memset(st, 0, sizeof *st);
  *(void **)&st->init = dlsym(lib, "gman_sum_init");
  *(void **)&st->deinit = dlsym(lib, "gman_sum_deinit");
  *(void **)&st->clear = dlsym(lib, "gman_sum_clear");
  *(void **)&st->add = dlsym(lib, "gman_sum_add");
  *(void **)&st->value = dlsym(lib, "gman_sum");
  if (!st->init || !st->deinit || !st->clear || !st->add || !st->value) {
    snprintf(st->message, sizeof st->message, "missing symbol for gman_sum");
    return false;
  }
  st->types[0] = function.type;
  st->values[0] = (char *)function.value;
  st->lengths[0] = function.length;
  st->names[0] = (char *)(function.name ? function.name : "'f'");
  st->types[1] = INT_RESULT;
  st->names[1] = "id";
  for (int i = 0; i < 2; i++) {
    st->maybe_null[i] = 1;
    st->name_lengths[i] = strlen(st->names[i]);
  }
  st->full = (struct full_args){ { 2, st->types, st->values, st->lengths, st->maybe_null },
                                 st->names, st->name_lengths, NULL };
  return st->init(&st->initid, &st->full.a, st->message) == 0;
}

static void sum_clear(struct sum_stmt *st)
{
  char is_null = 0, error = 0;
  st->clear(&st->initid, &is_null, &error);
}

/* One row: function (NULL: SQL NULL) and workload id. */
static void sum_row(struct sum_stmt *st, const char *function, long long id)
{
  char is_null = 0, error = 0;
  st->values[0] = (char *)function;
  st->lengths[0] = function ? strlen(function) : 0;
  st->lengths[1] = (unsigned long)snprintf(st->workload, sizeof st->workload, "%lld", id);
  st->values[1] = st->workload;
  st->add(&st->initid, &st->full.a, &is_null, &error);
}

/* The group's value; false if NULL. */
static bool sum_value(struct sum_stmt *st, long long *out)
{
  char is_null = 0, error = 0;
  *out = st->value(&st->initid, &st->full.a, &is_null, &error);
  return !is_null && !error;
}

/* ------------------------------------------------------------ the checks */

static void test_arguments(void)
{
  struct result r = call("gman_do_background", 0, NULL);
  check(message_has(r, "expected 2 or 3 arguments, got 0; usage: gman_do_background(function, "
                       "workload [, unique])"), "no arguments: init names the signature");
  check(strlen(r.message) <= 80 || strstr(r.message, "; usage: ") - r.message <= 80,
        "the problem fits the 80 bytes mysqld shows");
  struct arg four[] = { STR("f"), STR("w"), STR("u"), STR("x") };
  check(message_has(call("gman_do", 4, four), "gman_do(function, workload [, unique])"),
        "four arguments refused");
  struct arg int_fn = { INT_RESULT, "1", 1, NULL };
  check(message_has(call2("gman_do_background", int_fn, STR("w")),
                    "gman_do_background(function, workload [, unique]): function must be a "
                    "string"), "integer function name refused");
  check(message_has(call2("gman_do_low", STR(""), STR("w")), "function must not be empty"),
        "empty constant function name refused");
  check(message_has(call3("gman_do_high_background", STR("f"), STR("w"),
                          BYTES("a\0b", 3)), "unique must not contain whitespace or control"),
        "unique with a NUL byte refused");
  check(message_has(call2("gman_do_background", STR("ping\t777\t0\t0\nx"), STR("w")),
                    "function must not contain whitespace or control characters"),
        "function name with a tab and a newline refused");
  check(message_has(call2("gman_do", STR("two words"), STR("w")), "function must not contain"),
        "function name with a space refused");
  struct result from_column = call2("gman_do_background", COLUMN("a\tb"), STR("w"));
  check(!from_column.init_failed && from_column.is_null,
        "the same name from a trigger's NEW.col: NULL for the row, the INSERT goes on");
  from_column = call3("gman_do_background", STR("f"), STR("w"), COLUMN("a b"));
  check(!from_column.init_failed && from_column.is_null, "...and a unique from NEW.col too");
  check(message_has(call3("gman_do_background", STR("f"), STR("w"), STR("a\rb")),
                    "unique must not contain whitespace"), "unique with a CR refused");
  char long_unique[100];
  memset(long_unique, 'u', sizeof long_unique);
  check(message_has(call3("gman_do_background", STR("f"), STR("w"),
                          BYTES(long_unique, sizeof long_unique)), "unique is longer"),
        "unique longer than gearmand allows refused");
  check(message_has(call2("gman_do_epoch_background", STR("f"), STR("w")), "expected 3 or 4"),
        "epoch without unix_time refused");
  check(message_has(call3("gman_do_epoch_background", STR("f"), STR("w"), STR("soon")),
                    "unix_time must be a number"), "epoch with a string time refused");
  struct result r_null = call3("gman_do_epoch_background", STR("f"), STR("w"), NUL_ARG);
  check(!r_null.init_failed && r_null.is_null, "epoch with NULL unix_time: NULL, no error");
  struct arg huge = { INT_RESULT, "9223372036854775807", 19, NULL };
  check(message_has(call3("gman_do_epoch_background", STR("f"), STR("w"), huge),
                    "unix_time must be 0..4294967295"), "epoch of 2^63-1 refused");
  double big = 1e30;
  struct arg real = { REAL_RESULT, (const char *)&big, sizeof big, "1e30" };
  check(message_has(call3("gman_do_epoch_background", STR("f"), STR("w"), real),
                    "seconds, not milliseconds"), "epoch of 1e30 refused");
  check(message_has(call("gman_servers_set", 0, NULL), "gman_servers_set(servers [, function])"),
        "gman_servers_set without arguments refused");
  check(message_has(call2("gman_servers_set", STR("127.0.0.1:1"), STR("a b")),
                    "function must not contain whitespace"),
        "gman_servers_set with a function name holding a space refused");
  struct arg one[] = { STR("x") };
  check(message_has(call("gman_udf_status", 1, one), "takes no arguments"),
        "gman_udf_status with an argument refused");
}

static void test_submit(void)
{
  char handle[256] = "";
  struct result r = call2("gman_do_background", STR("driver_none"), STR("payload"));
  check(!r.is_null && r.length > 2 && memcmp(r.bytes, "H:", 2) == 0,
        "gman_do_background returns a job handle");
  memcpy(handle, r.bytes, r.length);
  check(status_has("\"submitted\":"), "gman_udf_status reports counters");

  static const char binary[] = "a\0b\0\xff\x01 json {\"k\": 1}";
  r = call2("gman_do_background", STR("driver_record"), BYTES(binary, sizeof binary));
  check(!r.is_null && wait_seen(1) && seen_equals(binary, sizeof binary),
        "background workload arrives byte for byte, NUL bytes included");

  r = call2("gman_do_low_background", STR("driver_record"), NUL_ARG);
  check(!r.is_null && wait_seen(2) && seen_equals("", 0), "NULL workload is sent empty");
  r = call2("gman_do_high_background", STR("driver_record"), BYTES("", 0));
  check(!r.is_null && wait_seen(3) && seen_equals("", 0), "empty workload is sent");

  r = call2("gman_do_background", NUL_ARG, STR("w"));
  check(r.is_null && !r.init_failed, "NULL function gives NULL");

  r = call2("gman_do", STR("driver_echo"), BYTES("x\0y", 3));
  check(!r.is_null && r.length == 8 && memcmp(r.bytes, "echo:x\0y", 8) == 0,
        "gman_do returns the worker's result, binary-safe");
  char big[3000];
  memset(big, 'b', sizeof big);
  r = call2("gman_do_high", STR("driver_echo"), BYTES(big, sizeof big));
  check(!r.is_null && r.length == sizeof big + 5 && memcmp(r.bytes + 5, big, sizeof big) == 0,
        "gman_do_high returns a result longer than 255 bytes");
  r = call2("gman_do_low", STR("driver_fail"), STR("w"));
  check(r.is_null, "a failing worker gives NULL");

  struct result a = call3("gman_do_background", STR("driver_none"), STR("1"), STR("same-key"));
  struct result b = call3("gman_do_background", STR("driver_none"), STR("2"), STR("same-key"));
  struct result c = call3("gman_do_background", STR("driver_none"), STR("3"), STR("other-key"));
  check(!a.is_null && !b.is_null && a.length == b.length &&
        memcmp(a.bytes, b.bytes, a.length) == 0, "same unique coalesces into one job");
  check(!c.is_null && (c.length != a.length || memcmp(a.bytes, c.bytes, a.length) != 0),
        "another unique is another job");

  struct arg number = { INT_RESULT, "4242", 4, NULL };
  a = call3("gman_do_background", STR("driver_none"), STR("1"), number);
  b = call3("gman_do_background", STR("driver_none"), STR("2"), STR("4242"));
  check(!a.init_failed && !a.is_null && !b.is_null && a.length == b.length &&
        memcmp(a.bytes, b.bytes, a.length) == 0,
        "a number as unique (NEW.id) is taken, as its digits");

  char when[32];
  snprintf(when, sizeof when, "%lld", (long long)time(NULL) + 3600);
  struct arg epoch[] = { STR("driver_later"), STR("w"), { INT_RESULT, when, strlen(when), NULL } };
  r = call("gman_do_epoch_background", 3, epoch);
  check(!r.is_null && memcmp(r.bytes, "H:", 2) == 0, "gman_do_epoch_background returns a handle");

  unsigned long long before = counter("connections_opened");
  for (int i = 0; i < 200; i++)
    call2("gman_do_background", STR("driver_none"), STR("reuse"));
  check(counter("connections_opened") == before, "200 statements reuse one connection");
}

static void test_failures(void)
{
  char text[512];
  int dead = closed_port();
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\nbackoff_ms=5000\n", dead);
  write_config(text);
  unsigned long long failed_before = counter("failed");
  double t0 = now_ms();
  struct result r = call2("gman_do_background", STR("driver_none"), STR("w"));
  double took = now_ms() - t0;
  check(r.is_null && took < 300, "closed port: NULL at once");
  check(counter("failed") == failed_before + 1, "failure counted");
  unsigned long long skipped = counter("skipped_backoff");
  t0 = now_ms();
  for (int i = 0; i < 1000; i++)
    call2("gman_do_background", STR("driver_none"), STR("w"));
  check(counter("skipped_backoff") == skipped + 1000, "failed server skipped during backoff");
  printf("# 1000 rows against a backed-off server: %.1f ms\n", now_ms() - t0);

  /* A refused port, a name that does not resolve, a server that closes before the ack and
   * one that answers ERROR: each job still reaches the real server, once. */
  struct fake closing, erring;
  fake_start(&closing, FAKE_CLOSE);
  fake_start(&erring, FAKE_ERROR);
  snprintf(text, sizeof text,
           "servers=127.0.0.1:%d, no-such-host.invalid:%d,127.0.0.1:%d,127.0.0.1:%d, "
           "127.0.0.1:%d\ntimeout_ms=2000\n", dead, gearman_port, closing.port, erring.port,
           gearman_port);
  write_config(text);
  unsigned long long resubmitted = counter("resubmitted");
  r = call2("gman_do_background", STR("driver_record"), STR("failover"));
  check(!r.is_null && wait_seen(4) && seen_equals("failover", 8),
        "refused, unresolvable, closing and erring servers: the job goes to the next");
  check(counter("resubmitted") == resubmitted + 1,
        "sent again once: after the connection closed before the ack");
  check(fake_stop(&closing) == 1 && fake_stop(&erring) == 1,
        "the closing and the erring server each saw the job once");

  /* Deadlines: result_timeout_ms for the whole foreground call, whatever the worker keeps
   * sending; timeout_ms only until gearmand has acknowledged the job. */
  struct fake status, data;
  fake_start(&status, FAKE_STATUS_FOREVER);
  fake_start(&data, FAKE_DATA_FOREVER);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d,127.0.0.1:%d\ntimeout_ms=100\n"
           "result_timeout_ms=400\n", status.port, data.port);
  write_config(text);
  unsigned long long timed_out = counter("timed_out");
  t0 = now_ms();
  r = call2("gman_do", STR("driver_slow"), STR("w"));
  took = now_ms() - t0;
  printf("# WORK_STATUS every 50 ms: NULL after %.0f ms (result_timeout_ms=400)\n", took);
  check(r.is_null && took >= 380 && took < 1500, "WORK_STATUS forever: NULL at the deadline");
  check(counter("timed_out") == timed_out + 1, "the timeout is counted");
  t0 = now_ms();
  r = call2("gman_do_high", STR("driver_slow"), STR("w"));
  check(r.is_null && now_ms() - t0 >= 380 && now_ms() - t0 < 1500,
        "a worker's timeout does not back the server off: it is asked again");
  check(fake_stop(&status) == 2 && fake_stop(&data) == 0,
        "a timed-out foreground job is not sent to the next server");

  fake_start(&data, FAKE_DATA_FOREVER);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=100\nresult_timeout_ms=400\n",
           data.port);
  write_config(text);
  t0 = now_ms();
  r = call2("gman_do", STR("driver_slow"), STR("w"));
  took = now_ms() - t0;
  printf("# WORK_DATA every 50 ms: NULL after %.0f ms (result_timeout_ms=400)\n", took);
  check(r.is_null && took >= 380 && took < 1500, "WORK_DATA forever: NULL at the deadline");
  check(fake_stop(&data) == 1, "...and submitted once");

  struct fake garbage;
  fake_start(&garbage, FAKE_GARBAGE);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d,127.0.0.1:%d\ntimeout_ms=400\n",
           garbage.port, gearman_port);
  write_config(text);
  r = call2("gman_do", STR("driver_echo"), STR("g"));
  check(r.is_null, "an answer that is not Gearman: NULL, not sent to the next server");
  r = call2("gman_do", STR("driver_echo"), STR("g"));
  check(!r.is_null && r.length == 6, "...which takes the next call while the first backs off");
  check(fake_stop(&garbage) == 1, "...and the garbage server saw the job once");

  /* A server that takes the connection and never answers: timeout_ms bounds every call,
   * a foreground one too, however long result_timeout_ms is. */
  int stalled_port;
  int stalled = listen_any(&stalled_port);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\nresult_timeout_ms=10000\n",
           stalled_port);
  write_config(text);
  t0 = now_ms();
  r = call2("gman_do_background", STR("driver_none"), STR("w"));
  took = now_ms() - t0;
  printf("# stalled server answered NULL after %.0f ms (timeout_ms=300)\n", took);
  check(r.is_null && took >= 250 && took < 800, "stalled server: NULL within timeout_ms");
  t0 = now_ms();
  r = call2("gman_do", STR("driver_echo"), STR("w"));
  check(r.is_null && now_ms() - t0 < 50, "stalled server then skipped by foreground call");
  close(stalled);
  stalled = listen_any(&stalled_port);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\nresult_timeout_ms=10000\n",
           stalled_port);
  write_config(text);
  t0 = now_ms();
  r = call2("gman_do", STR("driver_echo"), STR("w"));
  took = now_ms() - t0;
  printf("# stalled server, gman_do: NULL after %.0f ms (timeout_ms=300, "
         "result_timeout_ms=10000)\n", took);
  check(r.is_null && took >= 250 && took < 800,
        "stalled server: gman_do gives NULL at timeout_ms, not result_timeout_ms");
  close(stalled);

  /* A worker that takes longer than timeout_ms: its result is waited for. */
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=100\nresult_timeout_ms=5000\n",
           gearman_port);
  write_config(text);
  t0 = now_ms();
  r = call2("gman_do", STR("driver_nap"), STR("400"));
  took = now_ms() - t0;
  check(!r.is_null && r.length == 3 && memcmp(r.bytes, "400", 3) == 0 && took >= 400,
        "a result that takes 4 times timeout_ms comes back within result_timeout_ms");

  /* A worker that fails: no second submission on a reused connection. */
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\n", gearman_port);
  write_config(text);
  r = call2("gman_do", STR("driver_echo"), STR("warm"));
  int runs = __atomic_load_n(&fail_runs, __ATOMIC_RELAXED);
  resubmitted = counter("resubmitted");
  r = call2("gman_do", STR("driver_fail"), STR("once"));
  check(r.is_null && __atomic_load_n(&fail_runs, __ATOMIC_RELAXED) == runs + 1 &&
        counter("resubmitted") == resubmitted,
        "WORK_FAIL on a reused connection: the handler ran once, nothing sent again");
  r = call2("gman_do", STR("driver_echo"), STR("after"));
  check(!r.is_null && r.length == 10, "the connection serves the next job after a WORK_FAIL");
}

static void test_config(void)
{
  char text[8192];
  struct arg servers[] = { STR("127.0.0.1:1") };
  check(message_has(call("gman_servers_set", 1, servers),
                    "refused unless allow_servers_set=1 in "),
        "gman_servers_set refused when the config names servers");

  write_config("# no servers here\ntimeout_ms=500\n");
  struct result r = call("gman_servers_set", 1, servers);
  check(message_has(r, "refused unless allow_servers_set=1 in ") &&
        message_has(r, "gearman_udf.conf"),
        "gman_servers_set refused when the config names none, naming the key and the file");
  check(status_has("\"servers\":[\"127.0.0.1:4730\"]") && status_has("\"config_error\":null"),
        "a config without servers means 127.0.0.1:4730");

  unsigned long long before = config_generation();
  unlink(config_file);
  await_config(before, "its file was removed");
  check(message_has(call("gman_servers_set", 1, servers), "allow_servers_set=1"),
        "gman_servers_set refused without a config file");

  snprintf(text, sizeof text, "servers=127.0.0.1:%d\nallow_servers_set=1\n", gearman_port);
  write_config(text);
  snprintf(text, sizeof text, "127.0.0.1:%d", gearman_port);
  r = call("gman_servers_set", 1, (struct arg[]){ BYTES(text, strlen(text)) });
  check(!r.init_failed && !r.is_null && r.length == strlen(text),
        "gman_servers_set accepted with allow_servers_set=1");
  r = call2("gman_do_background", STR("driver_record"), STR("after set"));
  check(!r.is_null && wait_seen(5) && seen_equals("after set", 9),
        "jobs go to the servers just set");
  check(message_has(call("gman_servers_set", 1, (struct arg[]){ STR("host:99999") }),
                    "is not host:port"), "gman_servers_set rejects a bad port");
  check(message_has(call("gman_servers_set", 1, (struct arg[]){ STR("a:1,\tb:2") }),
                    "whitespace or a control character"),
        "gman_servers_set rejects a tab in an entry");

  /* A function with servers of its own; the others keep the default list. */
  int dead = closed_port();
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\nservers.driver_record=127.0.0.1:%d\n"
           "timeout_ms=500\nallow_servers_set=1\n", dead, gearman_port);
  write_config(text);
  /* What gman_servers_set(servers) set above still holds (the file allows it): the one
   * argument form sets the default list, and leaves the routes alone. */
  snprintf(text, sizeof text, "127.0.0.1:%d", dead);
  r = call("gman_servers_set", 1, (struct arg[]){ BYTES(text, strlen(text)) });
  check(!r.is_null, "gman_servers_set(servers) sets the default list beside a route");
  r = call2("gman_do_background", STR("driver_record"), STR("routed"));
  check(!r.is_null && wait_seen(6) && seen_equals("routed", 6),
        "servers.driver_record=: its jobs go to its own server");
  check(call2("gman_do_background", STR("driver_none"), STR("w")).is_null,
        "...and another function's to the default list (a closed port here)");
  snprintf(text, sizeof text, "\"routes\":{\"driver_record\":[\"127.0.0.1:%d\"]}",
           gearman_port);
  check(status_has(text), "gman_udf_status shows the route");
  snprintf(text, sizeof text, "127.0.0.1:%d", gearman_port);
  r = call2("gman_servers_set", BYTES(text, strlen(text)), STR("driver_echo"));
  check(!r.init_failed && !r.is_null, "gman_servers_set(servers, function) accepted");
  r = call2("gman_do", STR("driver_echo"), STR("x"));
  check(!r.is_null && r.length == 6, "...and that function's jobs go there");
  check(call2("gman_do_background", STR("driver_none"), STR("w")).is_null,
        "...while the default list stays as it was");
  snprintf(text, sizeof text, "\"driver_echo\":[\"127.0.0.1:%d\"]", gearman_port);
  check(status_has(text) && status_has("\"driver_record\":["),
        "gman_udf_status shows the file's route and the one set");
  write_config("servers=127.0.0.1:1\n");
  check(status_has("\"routes\":{}"),
        "a file that no longer allows gman_servers_set drops what it set");

  /* Fails closed: any bad line means no servers, never allow_servers_set. */
  static const char *const bad[] = {
    "servers=a:1;b:2\n",
    "servers=127.0.0.1:4730\ntimeout_ms=abc\nallow_servers_set=1\n",
    "allow_servers_set=1\nbogus=1\n",
    "servers=127.0.0.1:4730\nservers=127.0.0.1:4731\n",
    "servers=1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4,1.1.1.5,1.1.1.6,1.1.1.7,1.1.1.8,1.1.1.9,"
    "1.1.1.10,1.1.1.11,1.1.1.12,1.1.1.13,1.1.1.14,1.1.1.15,1.1.1.16,1.1.1.17\n",
    "servers=127.0.0.1:4730\nservers.f=127.0.0.1:99999\n",
    "servers=127.0.0.1:4730\nservers.=127.0.0.1:4731\n",
    "servers.f=127.0.0.1:4731\nservers=127.0.0.1:4730\nservers.f=127.0.0.1:4732\n",
    "", /* only a missing file means the defaults */
    "# servers=127.0.0.1:4730\n\n   \n; a template never filled in\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    write_config(bad[i]);
    r = call2("gman_do_background", STR("driver_none"), STR("closed"));
    char what[160];
    snprintf(what, sizeof what, "bad config %zu: no servers, no gman_servers_set, NULL", i + 1);
    check(r.is_null && status_has("\"servers\":[]") && status_has("\"config_error\":\"") &&
          status_has("\"allow_servers_set\":false") && status_has("\"routes\":{}"), what);
  }

  before = config_generation();
  unlink(config_file);
  mkdir(config_file, 0700);
  await_config(before, "a directory took its file's place");
  check(status_has("not a regular file") && status_has("\"servers\":[]"),
        "a directory in place of the file: no servers");
  rmdir(config_file);

  char nested[600];
  snprintf(nested, sizeof nested, "%s/gearman_udf.conf", config_file);
  write_config("servers=127.0.0.1:1\n");
  before = config_generation();
  setenv("GEARMAN_UDF_CONFIG", nested, 1); /* a path through a file: ENOTDIR */
  await_config(before, "its path went through a file");
  check(status_has("Not a directory") && status_has("\"servers\":[]"),
        "a file that cannot be read: no servers");
  setenv("GEARMAN_UDF_CONFIG", config_file, 1);

  /* A comment of any length stays a comment. */
  size_t n = (size_t)snprintf(text, sizeof text, "#");
  memset(text + n, 'x', 5000);
  n += 5000;
  snprintf(text + n, sizeof text - n, "servers=9.9.9.9:1\nservers=127.0.0.1:%d # ours\n",
           gearman_port);
  write_config(text);
  snprintf(text, sizeof text, "\"servers\":[\"127.0.0.1:%d\"]", gearman_port);
  check(status_has(text) && status_has("\"config_error\":null"),
        "a comment longer than any buffer: its tail is no setting");
}

static void test_sum(void)
{
  char text[512];
  struct sum_stmt st;
  long long v = 0;
  check(!sum_open(&st, STR("two words")) && strstr(st.message, "function must not contain"),
        "gman_sum: a literal function name with a space refused by init");
  struct arg three[] = { STR("f"), STR("w"), STR("u") };
  check(message_has(call("gman_sum", 3, three), "gman_sum(function, workload): expected 2"),
        "gman_sum: three arguments refused");

  unsigned long long submitted = counter("submitted");
  check(sum_open(&st, STR("driver_double")), "gman_sum: init");
  sum_clear(&st);
  for (int id = 1; id <= 100; id++)
    sum_row(&st, "driver_double", id);
  check(sum_value(&st, &v) && v == 10100, "gman_sum over 1..100 of a doubling worker: 10100");
  check(sum_value(&st, &v) && v == 10100, "...and the same value when asked again");
  check(counter("submitted") == submitted + 100, "...each job counted as submitted");

  /* GROUP BY: each group its own sum; a failing group does not spoil the next. */
  sum_clear(&st);
  for (int id = 1; id <= 10; id++)
    sum_row(&st, "driver_double", id);
  bool first = sum_value(&st, &v) && v == 110;
  sum_clear(&st);
  sum_row(&st, "driver_double", 1);
  sum_row(&st, "driver_fail", 2);
  sum_row(&st, "driver_double", 3);
  bool job_failed = !sum_value(&st, &v);
  sum_clear(&st);
  sum_row(&st, "driver_echo", 5);
  bool not_integer = !sum_value(&st, &v);
  sum_clear(&st);
  bool empty = !sum_value(&st, &v);
  sum_clear(&st);
  sum_row(&st, NULL, 5);
  bool only_null = !sum_value(&st, &v);
  sum_clear(&st);
  sum_row(&st, NULL, 5);
  for (int id = 11; id <= 20; id++)
    sum_row(&st, "driver_double", id);
  bool last = sum_value(&st, &v) && v == 310;
  check(first && last, "GROUP BY: each group its own sum (110, 310), NULL function rows left out");
  check(job_failed, "a group with a failing job: NULL");
  check(not_integer, "a group with a result that is not an integer: NULL");
  check(empty && only_null, "a group without a job: NULL, as SUM() of nothing");
  sum_clear(&st);
  sum_row(&st, "driver_double", 1);
  sum_row(&st, "a\tb", 2);
  check(!sum_value(&st, &v), "a function name with a tab from a column: the group is NULL");

  /* WITH ROLLUP: the server calls through a copy of the UDF_INIT with the same ptr. */
  UDF_INIT rollup_copy = st.initid;
  char rollup_null = 0, rollup_error = 0;
  sum_clear(&st);
  sum_row(&st, "driver_double", 1);
  st.add(&rollup_copy, &st.full.a, &rollup_null, &rollup_error);
  bool rollup_level = sum_value(&st, &v);
  sum_clear(&st);
  sum_row(&st, "driver_double", 2);
  check(!rollup_level && !sum_value(&st, &v) &&
        st.value(&rollup_copy, &st.full.a, &rollup_null, &rollup_error) == 0 && rollup_null,
        "a second UDF_INIT calling (WITH ROLLUP): every group of the statement is NULL");
  st.deinit(&st.initid);
  sum_open(&st, STR("driver_double"));

  /* Another UDF of the same statement between the rows: its answers are its own. */
  sum_clear(&st);
  bool echoed = true;
  for (int id = 1; id <= 20; id++) {
    sum_row(&st, "driver_double", id);
    struct result r = call2("gman_do", STR("driver_echo"), STR("x"));
    echoed = echoed && !r.is_null && r.length == 6 && memcmp(r.bytes, "echo:x", 6) == 0;
  }
  check(echoed && sum_value(&st, &v) && v == 420,
        "gman_do between a group's rows: both get their own answers");
  unsigned long long opened = counter("connections_opened");
  sum_clear(&st);
  for (int id = 1; id <= 5; id++)
    sum_row(&st, "driver_double", id);
  check(sum_value(&st, &v) && v == 30 && counter("connections_opened") == opened,
        "a group takes the thread's connection and gives it back");

  /* More jobs than may be out at once: rows wait for room; the ring goes round twice. */
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\nresult_timeout_ms=60000\n", gearman_port);
  write_config(text);
  st.deinit(&st.initid);
  sum_open(&st, STR("driver_double"));
  sum_clear(&st);
  for (int id = 1; id <= 2200; id++)
    sum_row(&st, "driver_double", id);
  check(sum_value(&st, &v) && v == 2200LL * 2201, "2200 jobs, 1000 out at most: the sum is right");

  /* Abandoned: mysqld may end a statement without asking for the value. */
  sum_clear(&st);
  for (int id = 1; id <= 50; id++)
    sum_row(&st, "driver_double", id);
  st.deinit(&st.initid);
  sum_open(&st, STR("driver_double"));
  sum_clear(&st);
  for (int id = 1; id <= 5; id++)
    sum_row(&st, "driver_double", id);
  check(sum_value(&st, &v) && v == 30,
        "a statement ended with jobs out: the next one sums right (valgrind: nothing leaks)");
  st.deinit(&st.initid);

  /* A server that closes with a job out: that job may have run, so the group is NULL; the
   * server is backed off and the next group goes to the next server. */
  struct fake closing;
  fake_start(&closing, FAKE_CLOSE);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d,127.0.0.1:%d\ntimeout_ms=2000\n",
           closing.port, gearman_port);
  write_config(text);
  sum_open(&st, STR("driver_double"));
  sum_clear(&st);
  sum_row(&st, "driver_double", 1);
  bool lost = !sum_value(&st, &v);
  sum_clear(&st);
  for (int id = 1; id <= 5; id++)
    sum_row(&st, "driver_double", id);
  check(lost && sum_value(&st, &v) && v == 30 && fake_stop(&closing) == 1,
        "connection lost with a job out: NULL, then the next server takes the next group");
  st.deinit(&st.initid);

  /* A group whose jobs take longer than timeout_ms in all: result_timeout_ms bounds it. */
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=100\nresult_timeout_ms=5000\n",
           gearman_port);
  write_config(text);
  sum_open(&st, STR("driver_nap"));
  sum_clear(&st);
  for (int k = 0; k < 3; k++)
    sum_row(&st, "driver_nap", 150);
  check(sum_value(&st, &v) && v == 450,
        "a group of 3 jobs of 150 ms on one worker, timeout_ms=100: the sum, not NULL");
  st.deinit(&st.initid);

  /* A worker that never answers: NULL at the group's deadline, result_timeout_ms. */
  struct fake acking;
  fake_start(&acking, FAKE_ACK_ONLY);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=100\nresult_timeout_ms=400\n",
           acking.port);
  write_config(text);
  unsigned long long timed_out = counter("timed_out");
  sum_open(&st, STR("driver_slow"));
  sum_clear(&st);
  double t0 = now_ms();
  for (int id = 1; id <= 20; id++)
    sum_row(&st, "driver_slow", id);
  bool null = !sum_value(&st, &v);
  double took = now_ms() - t0;
  printf("# gman_sum, 20 jobs never answered: NULL after %.0f ms (result_timeout_ms=400)\n",
         took);
  check(null && took >= 380 && took < 1500, "jobs acknowledged, never answered: NULL at the deadline");
  check(counter("timed_out") == timed_out + 1, "...counted once, as one group timed out");
  sum_clear(&st);
  sum_row(&st, "driver_slow", 1);
  check(!sum_value(&st, &v) && fake_stop(&acking) == 21,
        "...and the server is not backed off for it: the next group reaches it");
  st.deinit(&st.initid);

  /* A gearmand that acknowledges nothing: NULL at timeout_ms, the server backed off. */
  struct fake silent;
  fake_start(&silent, FAKE_SILENT);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\nresult_timeout_ms=10000\n"
           "backoff_ms=60000\n", silent.port);
  write_config(text);
  sum_open(&st, STR("driver_slow"));
  sum_clear(&st);
  t0 = now_ms();
  for (int id = 1; id <= 20; id++)
    sum_row(&st, "driver_slow", id);
  null = !sum_value(&st, &v);
  took = now_ms() - t0;
  printf("# gman_sum, 20 jobs never acknowledged: NULL after %.0f ms (timeout_ms=300, "
         "result_timeout_ms=10000)\n", took);
  check(null && took >= 280 && took < 1500,
        "jobs never acknowledged: NULL at timeout_ms, not result_timeout_ms");
  sum_clear(&st);
  t0 = now_ms();
  sum_row(&st, "driver_slow", 1);
  check(!sum_value(&st, &v) && now_ms() - t0 < 100 && fake_stop(&silent) == 20,
        "...and the server is backed off: the next group does not reach it");
  st.deinit(&st.initid);

  snprintf(text, sizeof text, "servers=127.0.0.1:%d\n", gearman_port);
  write_config(text);
}

/* gman_ship: sent without waiting; the acknowledgements are read by later calls. */
static void test_ship(void)
{
  char text[256];
  /* This gearmand keeps its queue in SQLite: a write per job, so a long deadline. */
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=20000\n", gearman_port);
  write_config(text);
  pthread_mutex_lock(&seen_lock);
  int base = seen_count;
  pthread_mutex_unlock(&seen_lock);
  struct result r = call3("gman_ship", STR("driver_record"), STR("shipped"), STR("ship-1"));
  check(!r.is_null && r.length == 6 && memcmp(r.bytes, "ship-1", 6) == 0,
        "gman_ship returns the unique it sent");
  check(wait_seen(base + 1) && seen_equals("shipped", 7), "a shipped job reaches its worker");

  unsigned long long opened = counter("connections_opened");
  unsigned long long submitted = counter("submitted");
  char unique[32];
  int sent = 0;
  double t0 = now_ms();
  for (int i = 0; i < 2000; i++) { /* past SHIP_WINDOW acknowledgements owed */
    snprintf(unique, sizeof unique, "ship-many-%d", i);
    r = call3("gman_ship", STR("driver_none"), STR("w"), BYTES(unique, strlen(unique)));
    sent += !r.is_null;
  }
  printf("# 2000 gman_ship calls: %.1f ms\n", now_ms() - t0);
  check(sent == 2000 && counter("submitted") == submitted + 2000,
        "2000 ships in a row are all sent");
  check(counter("connections_opened") == opened, "on the connection already open");
  r = call2("gman_do", STR("driver_echo"), STR("after"));
  check(!r.is_null && r.length == 10 && memcmp(r.bytes, "echo:after", 10) == 0,
        "gman_do after ships gets its answer: ships have connections of their own");

  struct fake erring;
  fake_start(&erring, FAKE_ERROR);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=500\n", erring.port);
  write_config(text);
  unsigned long long refused = counter("ship_refused");
  r = call3("gman_ship", STR("driver_none"), STR("w"), STR("ship-refused"));
  check(!r.is_null, "a ship to a server that will refuse it is sent");
  usleep(200000); /* the refusal is on its way back */
  r = call3("gman_ship", STR("driver_none"), STR("w"), STR("ship-refused-2"));
  check(!r.is_null && counter("ship_refused") == refused + 1,
        "the refusal of a shipped job is read and counted by the next ship");
  fake_stop(&erring);

  /* A gearmand that takes requests and acknowledges none: once SHIP_WINDOW are owed, the
   * ship waits timeout_ms, gives NULL, and the server is skipped. */
  struct fake silent;
  fake_start(&silent, FAKE_SILENT);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\nbackoff_ms=60000\n",
           silent.port);
  write_config(text);
  unsigned long long unacknowledged = counter("ship_unacknowledged");
  int shipped = 0;
  t0 = now_ms();
  for (int i = 0; i < 1025; i++) {
    snprintf(unique, sizeof unique, "ship-stalled-%d", i);
    r = call3("gman_ship", STR("driver_none"), STR("w"), BYTES(unique, strlen(unique)));
    shipped += !r.is_null;
  }
  check(shipped == 1024 && r.is_null,
        "a stalled gearmand takes SHIP_WINDOW ships; the next waits timeout_ms and gives NULL");
  check(counter("ship_unacknowledged") == unacknowledged + 1024,
        "the jobs it never acknowledged are counted");
  t0 = now_ms();
  r = call3("gman_ship", STR("driver_none"), STR("w"), STR("ship-skipped"));
  check(r.is_null && now_ms() - t0 < 100, "then it is skipped: NULL at once");
  fake_stop(&silent);

  /* A gearmand that reads nothing: the ship is buffered and the call returns; the flusher
   * sends what the socket takes, and once timeout_ms passes with nothing more taken it
   * drops the connection, counts the job, and backs the server off. */
  struct fake deaf;
  fake_start(&deaf, FAKE_DEAF);
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\nbackoff_ms=60000\n",
           deaf.port);
  write_config(text);
  unacknowledged = counter("ship_unacknowledged");
  unsigned long long timed_out = counter("timed_out");
  size_t big_len = 16u << 20; /* more than loopback's socket buffers hold */
  char *big = malloc(big_len);
  memset(big, 'b', big_len);
  t0 = now_ms();
  r = call3("gman_ship", STR("driver_none"), BYTES(big, big_len), STR("ship-deaf"));
  check(!r.is_null, "a big ship to a gearmand that reads nothing goes into the buffer");
  printf("# a 16 MB ship to a gearmand that reads nothing: %s after %.0f ms\n",
         r.is_null ? "NULL" : "sent", now_ms() - t0);
  while (counter("ship_unacknowledged") == unacknowledged && now_ms() - t0 < 10000)
    usleep(10000);
  printf("# given up after %.0f ms: %llu unacknowledged, %llu timed out\n", now_ms() - t0,
         counter("ship_unacknowledged") - unacknowledged, counter("timed_out") - timed_out);
  check(counter("ship_unacknowledged") == unacknowledged + 1 &&
            counter("timed_out") == timed_out + 1,
        "the flusher gives it up after timeout_ms without progress, counted");
  r = call3("gman_ship", STR("driver_none"), STR("w"), STR("ship-after-deaf"));
  check(r.is_null, "and the server is backed off: the next ship gives NULL at once");
  free(big);
  fake_stop(&deaf);

  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=300\n", closed_port());
  write_config(text);
  r = call3("gman_ship", STR("driver_none"), STR("w"), STR("ship-nowhere"));
  check(r.is_null, "a ship with no server reachable gives NULL");
}

static void test_unload_with_live_threads(void)
{
  enum { THREADS = 4 };
  pthread_t t[THREADS];
  pthread_barrier_init(&submitted_barrier, NULL, THREADS + 1);
  pthread_barrier_init(&release_barrier, NULL, THREADS + 1);
  for (int i = 0; i < THREADS; i++)
    pthread_create(&t[i], NULL, session_main, NULL);
  pthread_barrier_wait(&submitted_barrier);
  check(dlclose(lib) == 0 && !library_mapped(), "library unloads while threads hold clients");
  lib = NULL;
  pthread_barrier_wait(&release_barrier);
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  check(true, "threads exit after unload without calling into it");
  pthread_barrier_destroy(&submitted_barrier);
  pthread_barrier_destroy(&release_barrier);

  lib = dlopen(so_path, RTLD_NOW);
  struct result r = lib ? call2("gman_do_background", STR("driver_none"), STR("again"))
                        : (struct result){ .is_null = true };
  check(!r.is_null, "reloaded library submits again");
}

static void *token_in_thread(void *out)
{
  *(struct result *)out = call("gman_token", 0, NULL);
  return NULL;
}

static bool is_token(const struct result *r)
{
  if (r->is_null || r->length != 32)
    return false;
  for (unsigned long i = 0; i < r->length; i++)
    if (!strchr("0123456789ABCDEF", r->bytes[i]))
      return false;
  return true;
}

/* gman_token and gman_ship_ledger: the token reaches gearmand in the job's unique, and SQL
 * never gets it back from either. */
static void test_token_ship(void)
{
  char text[256];
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=20000\n", gearman_port);
  write_config(text);
  struct arg one = STR("x");
  struct result r = call("gman_token", 1, &one);
  check(r.init_failed && strstr(r.message, "expected no arguments") != NULL,
        "gman_token takes no argument");
  struct result first = call("gman_token", 0, NULL);
  struct result t = call("gman_token", 0, NULL);
  check(is_token(&first) && is_token(&t) && memcmp(first.bytes, t.bytes, 32) != 0,
        "gman_token: 32 hex digits, fresh each time");
  pthread_mutex_lock(&seen_lock);
  int base = seen_count;
  pthread_mutex_unlock(&seen_lock);
  struct arg ident = { INT_RESULT, "17", 2, NULL };
  r = call2("gman_ship_ledger", STR("driver_unique"), ident);
  check(!r.is_null && r.length == 3 && memcmp(r.bytes, "L17", 3) == 0,
        "gman_ship_ledger returns the row it named, not the token");
  char expected[64];
  snprintf(expected, sizeof expected, "L17:%.32s", t.bytes);
  check(wait_seen(base + 1) && seen_equals(expected, 36),
        "its job's unique is L<id>:<the token gman_token made last>");
  r = call2("gman_ship_ledger", STR("driver_unique"), ident);
  check(r.is_null, "the token is taken by the ship: a second ship sends nothing");

  (void)call("gman_token", 0, NULL);
  struct arg zero = { INT_RESULT, "0", 1, NULL };
  check(call2("gman_ship_ledger", STR("driver_unique"), zero).is_null &&
        call2("gman_ship_ledger", STR("driver_unique"), ident).is_null,
        "an id that names no row sends nothing, and uses the token up");

  struct result other;
  pthread_t thread;
  pthread_create(&thread, NULL, token_in_thread, &other);
  pthread_join(thread, NULL);
  check(is_token(&other) && call2("gman_ship_ledger", STR("driver_unique"), ident).is_null,
        "a token made in another thread is not this thread's to ship");

  r = call2("gman_ship_ledger", STR("driver_unique"), STR("17"));
  check(r.is_null, "no token pending: NULL");
  r = call("gman_ship_ledger", 1, &one);
  check(r.init_failed && strstr(r.message, "expected 2 arguments") != NULL,
        "gman_ship_ledger takes a function and a row id");

  enum { N = 200 };
  static char tokens[N][32];
  bool distinct = true;
  for (int i = 0; i < N; i++) { /* past TOKEN_POOL: the pool is read again */
    r = call("gman_token", 0, NULL);
    distinct = distinct && is_token(&r);
    memcpy(tokens[i], r.bytes, 32);
    for (int j = 0; j < i; j++)
      distinct = distinct && memcmp(tokens[i], tokens[j], 32) != 0;
  }
  check(distinct, "200 tokens in a row, all distinct");
}

int main(int argc, char **argv)
{
  if (argc != 4) {
    fprintf(stderr, "usage: %s SO_PATH GEARMAN_PORT SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  so_path = argv[1];
  gearman_port = atoi(argv[2]);
  scratch = argv[3];
  snprintf(config_file, sizeof config_file, "%s/gearman_udf.conf", scratch);
  setenv("GEARMAN_UDF_CONFIG", config_file, 1);
  char text[256];
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\ntimeout_ms=1000\n", gearman_port);
  write_config(text);

  lib = dlopen(so_path, RTLD_NOW);
  if (lib == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  pthread_t worker;
  pthread_create(&worker, NULL, worker_main, NULL);

  test_arguments();
  test_submit();
  test_failures();
  test_config();
  test_sum();
  test_ship();
  test_token_ship();
  /* Back to a reachable server for the unload test. */
  snprintf(text, sizeof text, "servers=127.0.0.1:%d\n", gearman_port);
  write_config(text);
  test_unload_with_live_threads();

  __atomic_store_n(&worker_stop, true, __ATOMIC_RELAXED);
  pthread_join(worker, NULL);
  if (lib)
    dlclose(lib);
  unlink(config_file);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
