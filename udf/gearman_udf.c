/*
 * gearman_udf.c: submit Gearman jobs from MySQL/MariaDB (replaces gearman-mysql-udf 0.6).
 *
 * SQL functions (all RETURNS STRING, see sql/install.sql):
 *
 *   gman_do_background(function, workload [, unique])       -> job handle, or NULL
 *   gman_do_high_background / gman_do_low_background        -> same, other priority
 *   gman_do_epoch_background(function, workload, unix_time [, unique]) -> job handle, or NULL
 *   gman_do(function, workload [, unique])                   -> the worker's result, or NULL
 *   gman_do_high / gman_do_low                               -> same, other priority
 *   gman_servers_set(servers)                                -> servers, or an error
 *   gman_udf_status()                                        -> JSON: config and counters
 *
 * The UDF contract (as in MariaDB's udf_example.c):
 *   - xxx_init runs once per statement: it checks and coerces the arguments and is the
 *     only place a message reaches the user; per-statement state lives in initid->ptr
 *     and is freed in xxx_deinit.
 *   - xxx runs once per row, from any mysqld thread, concurrently with other sessions.
 *   - string arguments are pointer plus length: never NUL-terminated, never written to.
 *
 * Decisions:
 *   - NULL function: NULL result, nothing submitted. NULL workload: an empty workload is
 *     submitted (a trigger's event is not dropped because one column was NULL).
 *     NULL or empty unique: the UDF makes one that no other job shares (a random
 *     per-load prefix and a counter), so gearmand coalesces nothing. libgearman would
 *     make a UUID instead, at the price of a failed connect() to uuidd for every row.
 *   - Failure (no server reachable, timeout, worker failed) returns NULL and logs a
 *     rate-limited line to stderr, which is mysqld's error log. A row never raises an
 *     error: a trigger must not make the user's INSERT fail because gearmand is down.
 *
 * Configuration: a key=value file named by mysqld's environment variable
 * GEARMAN_UDF_CONFIG (default /etc/mysql/gearman_udf.conf), owned by whoever runs mysqld:
 *   servers=host:port[,host:port...]   tried in order; default 127.0.0.1:4730
 *   timeout_ms=1000                    bounds every network wait
 *   backoff_ms=1000                    how long a failed server is skipped
 *   allow_servers_set=0|1              default 1 only when the file names no servers
 * It is re-read when it changes (checked at most once a second, from xxx_init).
 *
 * Connections: each mysqld thread keeps one gearman client per server and reuses it for
 * every row and statement; the client is dropped after any error and after a config
 * change. Thread states sit in a registry so that the library destructor can free them:
 * MariaDB unloads this library when the last function is dropped, and a thread that
 * exits afterwards must not call back into unmapped code.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mysql.h>
#include <libgearman/gearman.h>

/* MySQL 8 dropped my_bool: its UDF_INIT uses bool and the row flags are unsigned char. */
#if defined(MARIADB_BASE_VERSION) || MYSQL_VERSION_ID < 80000
typedef char udf_bool;
typedef char udf_flag;
#else
typedef bool udf_bool;
typedef unsigned char udf_flag;
#endif

#define UDF_EXPORT __attribute__((visibility("default")))

/* The size of the message buffer xxx_init may fill; MYSQL_ERRMSG_SIZE in both servers. */
#ifdef MYSQL_ERRMSG_SIZE
#define MESSAGE_SIZE MYSQL_ERRMSG_SIZE
#else
#define MESSAGE_SIZE 512
#endif
/* ...of which the user sees this much: "Can't initialize function '%s'; %-.80s". */
#define MESSAGE_SHOWN 80

#define GMU_VERSION "1.0.0"
#define CONFIG_ENV "GEARMAN_UDF_CONFIG"
#define CONFIG_DEFAULT_PATH "/etc/mysql/gearman_udf.conf"
#define DEFAULT_HOST "127.0.0.1"
#define DEFAULT_PORT GEARMAN_DEFAULT_TCP_PORT
#define DEFAULT_TIMEOUT_MS 1000
#define DEFAULT_BACKOFF_MS 1000
#define MAX_DURATION_MS 600000   /* ten minutes: anything longer is a typo */
#define CONFIG_CHECK_EVERY_MS 1000 /* at most one stat() of the config file a second */
#define LOG_EVERY_MS 10000        /* at most one log line per source every ten seconds */
#define MAX_SERVERS 16
#define MAX_HOST 256
#define MAX_UNIQUE (GEARMAN_MAX_UNIQUE_SIZE - 1)  /* libgearman keeps a NUL after it */
#define MAX_FUNCTION (GEARMAN_FUNCTION_MAX_SIZE - 1)
#define FOREGROUND_MAX_LENGTH 16777215 /* MEDIUMBLOB: a worker result may be large */
#define STATUS_BUF 8192

/* ---------------------------------------------------------------- logging */

struct rate_limit {
  int64_t last_ms;     /* atomic: when the last line was written */
  uint64_t suppressed; /* atomic: lines dropped since */
};

static int64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool rate_limit_pass(struct rate_limit *rl, uint64_t *suppressed)
{
  *suppressed = 0;
  if (rl == NULL)
    return true;
  int64_t now = now_ms();
  int64_t last = __atomic_load_n(&rl->last_ms, __ATOMIC_RELAXED);
  if (last != 0 && now - last < LOG_EVERY_MS) {
    __atomic_fetch_add(&rl->suppressed, 1, __ATOMIC_RELAXED);
    return false;
  }
  if (!__atomic_compare_exchange_n(&rl->last_ms, &last, now, false, __ATOMIC_RELAXED,
                                   __ATOMIC_RELAXED)) {
    __atomic_fetch_add(&rl->suppressed, 1, __ATOMIC_RELAXED);
    return false;
  }
  *suppressed = __atomic_exchange_n(&rl->suppressed, 0, __ATOMIC_RELAXED);
  return true;
}

/* One line to stderr (mysqld's error log) in mysqld's own format, in one write(2). */
__attribute__((format(printf, 2, 3)))
static void log_line(struct rate_limit *rl, const char *fmt, ...)
{
  uint64_t suppressed;
  if (!rate_limit_pass(rl, &suppressed))
    return;

  char line[1024];
  time_t t = time(NULL);
  struct tm tm;
  localtime_r(&t, &tm);
  int n = (int)strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S 0 [Warning] gearman_udf: ", &tm);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  n = m < 0 ? n : n + m;
  if (n > (int)sizeof line - 64)
    n = (int)sizeof line - 64;
  if (suppressed)
    n += snprintf(line + n, sizeof line - (size_t)n, " (%llu similar lines suppressed)",
                  (unsigned long long)suppressed);
  line[n++] = '\n';
  ssize_t unused = write(STDERR_FILENO, line, (size_t)n);
  (void)unused;
}

/* The one logging macro: rl is a struct rate_limit *, or NULL for a line never suppressed. */
#define UDF_LOG(rl, ...) log_line((rl), __VA_ARGS__)

/* ---------------------------------------------------------------- counters */

enum counter {
  C_SUBMITTED,
  C_FAILED,
  C_CONNECTIONS_OPENED,
  C_RECONNECTS,
  C_SKIPPED_BACKOFF,
  C_COUNT
};

static const char *const counter_names[C_COUNT] = {
  "submitted", "failed", "connections_opened", "reconnects", "skipped_backoff",
};

/* Process-wide statistics; only ever touched with atomic adds and loads. */
static uint64_t g_counters[C_COUNT];

static void count(enum counter c)
{
  __atomic_fetch_add(&g_counters[c], 1, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- configuration */

struct server {
  char host[MAX_HOST];
  in_port_t port;
};

struct config {
  struct server servers[MAX_SERVERS];
  unsigned nservers;
  int timeout_ms;
  int backoff_ms;
  bool allow_servers_set;
};

static void config_defaults(struct config *c)
{
  memset(c, 0, sizeof *c);
  snprintf(c->servers[0].host, MAX_HOST, "%s", DEFAULT_HOST);
  c->servers[0].port = DEFAULT_PORT;
  c->nservers = 1;
  c->timeout_ms = DEFAULT_TIMEOUT_MS;
  c->backoff_ms = DEFAULT_BACKOFF_MS;
  c->allow_servers_set = true;
}

/* "host[:port]" or "[v6addr][:port]" of n bytes; false if malformed. */
static bool parse_server(const char *s, size_t n, struct server *out)
{
  const char *host = s, *port = NULL;
  size_t host_len = n;
  if (n > 0 && s[0] == '[') {
    const char *close = memchr(s, ']', n);
    if (close == NULL)
      return false;
    host = s + 1;
    host_len = (size_t)(close - host);
    if (close + 1 < s + n) {
      if (close[1] != ':')
        return false;
      port = close + 2;
    }
  } else {
    const char *colon = memchr(s, ':', n);
    if (colon != NULL) {
      host_len = (size_t)(colon - s);
      port = colon + 1;
    }
  }
  if (host_len == 0 || host_len >= MAX_HOST)
    return false;
  for (size_t i = 0; i < host_len; i++) {
    char ch = host[i];
    if (!(ch == '.' || ch == '-' || ch == '_' || ch == ':' || (ch >= '0' && ch <= '9') ||
          (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
      return false;
  }
  long portnum = DEFAULT_PORT;
  if (port != NULL) {
    size_t port_len = (size_t)(s + n - port);
    if (port_len == 0 || port_len > 5)
      return false;
    portnum = 0;
    for (size_t i = 0; i < port_len; i++) {
      if (port[i] < '0' || port[i] > '9')
        return false;
      portnum = portnum * 10 + (port[i] - '0');
    }
    if (portnum < 1 || portnum > 65535)
      return false;
  }
  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  out->port = (in_port_t)portnum;
  return true;
}

/* A comma-separated list of n bytes; spaces around entries are ignored. */
static bool parse_servers(const char *s, size_t n, struct server *out, unsigned *count_out)
{
  unsigned count = 0;
  const char *end = s + n;
  while (s < end) {
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *item_end = comma ? comma : end;
    const char *a = s, *b = item_end;
    while (a < b && (*a == ' ' || *a == '\t'))
      a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
      b--;
    if (count == MAX_SERVERS || !parse_server(a, (size_t)(b - a), &out[count]))
      return false;
    count++;
    s = comma ? comma + 1 : end;
    if (comma && s == end)
      return false; /* trailing comma */
  }
  *count_out = count;
  return count > 0;
}

static bool parse_ms(const char *s, int *out)
{
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end != '\0' || v < 1 || v > MAX_DURATION_MS)
    return false;
  *out = (int)v;
  return true;
}

static bool parse_flag(const char *s, bool *out)
{
  if (strcmp(s, "1") == 0 || strcmp(s, "true") == 0 || strcmp(s, "yes") == 0 ||
      strcmp(s, "on") == 0) {
    *out = true;
    return true;
  }
  if (strcmp(s, "0") == 0 || strcmp(s, "false") == 0 || strcmp(s, "no") == 0 ||
      strcmp(s, "off") == 0) {
    *out = false;
    return true;
  }
  return false;
}

static char *trim(char *s)
{
  while (*s == ' ' || *s == '\t')
    s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
    *--e = '\0';
  return s;
}

/* Read path into *c. A bad line or value is logged and that key keeps its default. */
static void config_parse(const char *path, FILE *f, struct config *c)
{
  bool allow_given = false, servers_given = false;
  char line[4096];
  unsigned lineno = 0;
  config_defaults(c);
  while (fgets(line, sizeof line, f) != NULL) {
    lineno++;
    char *s = trim(line);
    if (*s == '\0' || *s == '#' || *s == ';')
      continue;
    char *eq = strchr(s, '=');
    if (eq == NULL) {
      UDF_LOG(NULL, "%s:%u: expected key=value, got '%.100s'; line ignored", path, lineno, s);
      continue;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    if (strcmp(key, "servers") == 0) {
      struct server parsed[MAX_SERVERS];
      unsigned n;
      if (parse_servers(value, strlen(value), parsed, &n)) {
        memcpy(c->servers, parsed, sizeof parsed);
        c->nservers = n;
        servers_given = true;
      } else {
        UDF_LOG(NULL, "%s:%u: servers: expected host:port[,host:port...] (at most %d), "
                "got '%.200s'; keeping %s:%d", path, lineno, MAX_SERVERS, value,
                DEFAULT_HOST, DEFAULT_PORT);
      }
    } else if (strcmp(key, "timeout_ms") == 0) {
      if (!parse_ms(value, &c->timeout_ms))
        UDF_LOG(NULL, "%s:%u: timeout_ms: expected milliseconds 1..%d, got '%.100s'; "
                "keeping %d", path, lineno, MAX_DURATION_MS, value, DEFAULT_TIMEOUT_MS);
    } else if (strcmp(key, "backoff_ms") == 0) {
      if (!parse_ms(value, &c->backoff_ms))
        UDF_LOG(NULL, "%s:%u: backoff_ms: expected milliseconds 1..%d, got '%.100s'; "
                "keeping %d", path, lineno, MAX_DURATION_MS, value, DEFAULT_BACKOFF_MS);
    } else if (strcmp(key, "allow_servers_set") == 0) {
      if (parse_flag(value, &c->allow_servers_set))
        allow_given = true;
      else
        UDF_LOG(NULL, "%s:%u: allow_servers_set: expected 0 or 1, got '%.100s'; "
                "keeping the default", path, lineno, value);
    } else {
      UDF_LOG(NULL, "%s:%u: unknown key '%.100s' ignored (known: servers, timeout_ms, "
              "backoff_ms, allow_servers_set)", path, lineno, key);
    }
  }
  if (!allow_given)
    c->allow_servers_set = !servers_given;
}

/*
 * g_config_lock guards g_config, g_servers_override and the g_config_* bookkeeping.
 * g_generation is written under it and read atomically without it: a thread whose
 * snapshot has an older generation drops its connections and copies g_config again.
 * g_down_until[i] (atomic, ms on the monotonic clock) is shared by all threads: until
 * then, server i of the current generation is skipped.
 */
static pthread_mutex_t g_config_lock = PTHREAD_MUTEX_INITIALIZER;
static struct config g_config = {
  .servers = { { DEFAULT_HOST, DEFAULT_PORT } },
  .nservers = 1,
  .timeout_ms = DEFAULT_TIMEOUT_MS,
  .backoff_ms = DEFAULT_BACKOFF_MS,
  .allow_servers_set = true,
};
static struct config g_servers_override; /* from gman_servers_set; nservers 0 if none */
static int64_t g_config_checked_ms = INT64_MIN / 2;
static bool g_config_present;
static struct stat g_config_stat;
static uint64_t g_generation = 1;
static int64_t g_down_until[MAX_SERVERS];
static struct rate_limit g_server_log[MAX_SERVERS];
static struct rate_limit g_misc_log;

static const char *config_path(void)
{
  const char *p = getenv(CONFIG_ENV);
  return p && *p ? p : CONFIG_DEFAULT_PATH;
}

static bool same_file_version(const struct stat *a, const struct stat *b)
{
  return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
         a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Called with g_config_lock held: publish c as the new configuration. */
static void config_publish(const struct config *c)
{
  g_config = *c;
  for (unsigned i = 0; i < MAX_SERVERS; i++)
    __atomic_store_n(&g_down_until[i], 0, __ATOMIC_RELAXED);
  __atomic_add_fetch(&g_generation, 1, __ATOMIC_RELEASE);
}

/* Re-read the config file if it changed; stats it at most once a second. */
static void config_refresh(void)
{
  int64_t now = now_ms();
  if (now - __atomic_load_n(&g_config_checked_ms, __ATOMIC_RELAXED) < CONFIG_CHECK_EVERY_MS)
    return;
  pthread_mutex_lock(&g_config_lock);
  if (now - g_config_checked_ms < CONFIG_CHECK_EVERY_MS) {
    pthread_mutex_unlock(&g_config_lock);
    return;
  }
  __atomic_store_n(&g_config_checked_ms, now, __ATOMIC_RELAXED);

  const char *path = config_path();
  struct stat st;
  memset(&st, 0, sizeof st);
  bool present = stat(path, &st) == 0;
  if (present == g_config_present && (!present || same_file_version(&st, &g_config_stat))) {
    pthread_mutex_unlock(&g_config_lock);
    return;
  }

  struct config c;
  FILE *f = present ? fopen(path, "r") : NULL;
  if (f != NULL) {
    config_parse(path, f, &c);
    fclose(f);
  } else {
    if (present)
      UDF_LOG(NULL, "%s: cannot read (%s); using defaults", path, strerror(errno));
    config_defaults(&c);
  }
  /* A runtime gman_servers_set() survives reloads as long as the file still allows it. */
  if (!c.allow_servers_set) {
    g_servers_override.nservers = 0;
  } else if (g_servers_override.nservers > 0) {
    memcpy(c.servers, g_servers_override.servers, sizeof c.servers);
    c.nservers = g_servers_override.nservers;
  }
  g_config_present = present;
  g_config_stat = st;
  config_publish(&c);
  pthread_mutex_unlock(&g_config_lock);
}

static void config_snapshot(struct config *out, uint64_t *generation)
{
  pthread_mutex_lock(&g_config_lock);
  *out = g_config;
  *generation = __atomic_load_n(&g_generation, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&g_config_lock);
}

/* ---------------------------------------------------------------- per-thread clients */

struct thread_state {
  struct thread_state *prev, *next; /* registry links, guarded by g_registry_lock */
  uint64_t generation;              /* of the config snapshot below */
  struct config config;
  gearman_client_st *clients[MAX_SERVERS];
  bool proven[MAX_SERVERS];   /* clients[i] has completed a submit: it may have gone stale */
  bool ever_open[MAX_SERVERS]; /* a client for server i existed before: a new one reconnects */
};

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

static void thread_state_close(struct thread_state *st)
{
  for (unsigned i = 0; i < MAX_SERVERS; i++) {
    if (st->clients[i] != NULL) {
      gearman_client_free(st->clients[i]);
      st->clients[i] = NULL;
    }
    st->proven[i] = false;
  }
}

static void thread_state_free(void *p)
{
  struct thread_state *st = p;
  pthread_mutex_lock(&g_registry_lock);
  if (!g_key_ready) {
    /* This thread exits while the library unloads: library_unload frees st. */
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
  thread_state_close(st);
  free(st);
}

/*
 * Uniques for jobs the caller gave none: "<prefix>-<counter>", both 16 hex digits. The
 * prefix is random per load, so two servers (or two loads) never share one; the counter is
 * atomic. Both are written once here, before any UDF can run, or atomically.
 */
#define GENERATED_UNIQUE_LEN 33
static uint64_t g_unique_prefix;
static uint64_t g_unique_counter;
_Static_assert(GENERATED_UNIQUE_LEN <= MAX_UNIQUE, "a generated unique must fit");

static void unique_prefix_init(void)
{
  if (getrandom(&g_unique_prefix, sizeof g_unique_prefix, GRND_NONBLOCK) !=
      (ssize_t)sizeof g_unique_prefix) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    g_unique_prefix = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^
                      ((uint64_t)getpid() << 48);
  }
}

/* Writes a fresh unique and its NUL into out (GENERATED_UNIQUE_LEN + 1 bytes). */
static void unique_generate(char *out)
{
  uint64_t n = __atomic_add_fetch(&g_unique_counter, 1, __ATOMIC_RELAXED);
  snprintf(out, GENERATED_UNIQUE_LEN + 1, "%016llx-%016llx",
           (unsigned long long)g_unique_prefix, (unsigned long long)n);
}

__attribute__((constructor))
static void library_load(void)
{
  unique_prefix_init();
  pthread_mutex_lock(&g_registry_lock);
  g_key_ready = pthread_key_create(&g_state_key, thread_state_free) == 0;
  pthread_mutex_unlock(&g_registry_lock);
}

__attribute__((destructor))
static void library_unload(void)
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
    thread_state_close(st);
    free(st);
    st = next;
  }
}

/* This thread's state, its config snapshot current; NULL only if out of memory. */
static struct thread_state *thread_state_get(void)
{
  struct thread_state *st = g_key_ready ? pthread_getspecific(g_state_key) : NULL;
  if (st == NULL) {
    st = calloc(1, sizeof *st);
    if (st == NULL || !g_key_ready || pthread_setspecific(g_state_key, st) != 0) {
      free(st);
      return NULL;
    }
    pthread_mutex_lock(&g_registry_lock);
    st->next = g_registry;
    if (g_registry)
      g_registry->prev = st;
    g_registry = st;
    pthread_mutex_unlock(&g_registry_lock);
  }
  if (st->generation != __atomic_load_n(&g_generation, __ATOMIC_ACQUIRE)) {
    thread_state_close(st);
    config_snapshot(&st->config, &st->generation);
  }
  return st;
}

static gearman_client_st *client_for(struct thread_state *st, unsigned i)
{
  if (st->clients[i] != NULL)
    return st->clients[i];
  gearman_client_st *c = gearman_client_create(NULL);
  if (c == NULL)
    return NULL;
  const struct server *s = &st->config.servers[i];
  if (gearman_failed(gearman_client_add_server(c, s->host, s->port))) {
    UDF_LOG(&g_server_log[i], "%s:%u: %s", s->host, s->port, gearman_client_error(c));
    gearman_client_free(c);
    return NULL;
  }
  gearman_client_set_timeout(c, st->config.timeout_ms);
  gearman_client_remove_options(c, GEARMAN_CLIENT_GENERATE_UNIQUE); /* ours is cheaper */
  count(C_CONNECTIONS_OPENED);
  if (st->ever_open[i])
    count(C_RECONNECTS);
  st->ever_open[i] = true;
  st->clients[i] = c;
  return c;
}

static void client_drop(struct thread_state *st, unsigned i)
{
  gearman_client_free(st->clients[i]);
  st->clients[i] = NULL;
  st->proven[i] = false;
}

/* ---------------------------------------------------------------- submitting */

enum job_kind { JOB_FOREGROUND, JOB_BACKGROUND, JOB_EPOCH };

struct udf_spec {
  const char *usage;    /* the signature, as shown in every init message */
  enum job_kind kind;
  gearman_job_priority_t priority;
};

struct job {
  const char *function; /* NUL-terminated: libgearman sends the byte after it as separator */
  size_t function_len;
  const char *unique;   /* NUL-terminated too, or NULL */
  size_t unique_len;
  const char *workload; /* NULL when empty: libgearman refuses a pointer with no bytes */
  size_t workload_len;
  time_t epoch;
};

/* Per-statement state in initid->ptr: the bytes the row function returns. */
struct call {
  const struct udf_spec *spec;
  char *buf;
  size_t cap;
  size_t len;
  char function[MAX_FUNCTION + 1]; /* NUL-terminated copies of this row's arguments */
  char unique[MAX_UNIQUE + 1];
};

static bool call_reserve(struct call *call, size_t n)
{
  if (n <= call->cap)
    return true;
  char *p = realloc(call->buf, n);
  if (p == NULL)
    return false;
  call->buf = p;
  call->cap = n;
  return true;
}

/* Keep what a successful task produced: its handle, or its result for a foreground job. */
static bool call_keep(struct call *call, gearman_task_st *task)
{
  const char *bytes;
  size_t n;
  if (call->spec->kind == JOB_FOREGROUND) {
    gearman_result_st *r = gearman_task_result(task);
    bytes = r ? gearman_result_value(r) : NULL;
    n = r && bytes ? gearman_result_size(r) : 0;
  } else {
    bytes = gearman_task_job_handle(task);
    n = bytes ? strnlen(bytes, GEARMAN_JOB_HANDLE_SIZE) : 0;
  }
  if (!call_reserve(call, n ? n : 1))
    return false;
  if (n)
    memcpy(call->buf, bytes, n);
  call->len = n;
  return true;
}

static gearman_task_attr_t job_attr(const struct udf_spec *spec, const struct job *job)
{
  switch (spec->kind) {
  case JOB_BACKGROUND:
    return gearman_task_attr_init_background(spec->priority);
  case JOB_EPOCH:
    return gearman_task_attr_init_epoch(job->epoch, spec->priority);
  case JOB_FOREGROUND:
  default:
    return gearman_task_attr_init(spec->priority);
  }
}

/* One attempt on server i; SUCCESS leaves the outcome in call. */
static gearman_return_t submit_once(struct thread_state *st, unsigned i, struct call *call,
                                    const struct job *job)
{
  gearman_client_st *c = client_for(st, i);
  if (c == NULL)
    return GEARMAN_MEMORY_ALLOCATION_FAILURE;
  gearman_task_attr_t attr = job_attr(call->spec, job);
  gearman_argument_t arg = gearman_argument_make(NULL, 0, job->workload, job->workload_len);
  gearman_task_st *task = gearman_execute(c, job->function, job->function_len, job->unique,
                                          job->unique_len, &attr, &arg, NULL);
  gearman_return_t rc = task ? gearman_task_return(task) : gearman_client_error_code(c);
  if (rc == GEARMAN_SUCCESS && !call_keep(call, task))
    rc = GEARMAN_MEMORY_ALLOCATION_FAILURE;
  if (rc != GEARMAN_SUCCESS) {
    const struct server *s = &st->config.servers[i];
    UDF_LOG(&g_server_log[i], "%s:%u: submitting to '%.*s' failed: %s (%s)", s->host, s->port,
            (int)(job->function_len > 100 ? 100 : job->function_len), job->function,
            gearman_strerror(rc), gearman_client_error(c));
  }
  if (task != NULL)
    gearman_task_free(task);
  return rc;
}

/* Whether rc blames the server or the network (back off, try the next) or the job. */
static bool server_fault(gearman_return_t rc)
{
  switch (rc) {
  case GEARMAN_INVALID_ARGUMENT:
  case GEARMAN_MEMORY_ALLOCATION_FAILURE:
  case GEARMAN_WORK_FAIL:
  case GEARMAN_WORK_EXCEPTION:
    return false;
  default:
    return true;
  }
}

/*
 * Submit job to the first server that takes it. A failed client is dropped (a timed-out
 * foreground job would otherwise answer a later one); a client that had worked before
 * gets one retry on a fresh connection, since gearmand may simply have restarted.
 * A server that fails is skipped by every thread for backoff_ms.
 */
static bool submit(struct call *call, const struct job *job)
{
  struct thread_state *st = thread_state_get();
  if (st == NULL) {
    UDF_LOG(&g_misc_log, "out of memory");
    count(C_FAILED);
    return false;
  }
  for (unsigned i = 0; i < st->config.nservers; i++) {
    if (now_ms() < __atomic_load_n(&g_down_until[i], __ATOMIC_RELAXED)) {
      count(C_SKIPPED_BACKOFF);
      continue;
    }
    bool retry = st->proven[i];
    gearman_return_t rc = submit_once(st, i, call, job);
    if (rc != GEARMAN_SUCCESS && rc != GEARMAN_TIMEOUT && retry) {
      client_drop(st, i);
      rc = submit_once(st, i, call, job);
    }
    if (rc == GEARMAN_SUCCESS) {
      st->proven[i] = true;
      count(C_SUBMITTED);
      return true;
    }
    if (st->clients[i] != NULL)
      client_drop(st, i);
    if (!server_fault(rc))
      break; /* another server would answer the same */
    __atomic_store_n(&g_down_until[i], now_ms() + st->config.backoff_ms, __ATOMIC_RELAXED);
    if (call->spec->kind == JOB_FOREGROUND && rc != GEARMAN_COULD_NOT_CONNECT)
      break; /* the job may be running there: do not run it twice */
  }
  count(C_FAILED);
  return false;
}

/* ---------------------------------------------------------------- argument checks */

static bool is_number(enum Item_result t)
{
  return t == INT_RESULT || t == REAL_RESULT || t == DECIMAL_RESULT;
}

/*
 * Fill xxx_init's message as "usage: problem". mysqld shows at most MESSAGE_SHOWN bytes of
 * it, so when both do not fit the problem goes first and the usage is cut instead.
 */
__attribute__((format(printf, 3, 4)))
static void init_error(char *message, const char *usage, const char *fmt, ...)
{
  char problem[MESSAGE_SIZE / 2];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(problem, sizeof problem, fmt, ap);
  va_end(ap);
  if (strlen(usage) + 2 + strlen(problem) <= MESSAGE_SHOWN)
    snprintf(message, MESSAGE_SIZE, "%s: %s", usage, problem);
  else
    snprintf(message, MESSAGE_SIZE, "%s; usage: %s", problem, usage);
}

/* Checks of constant string arguments that a row would otherwise fail silently. */
static bool const_name_ok(UDF_ARGS *args, unsigned i, size_t max, const char *what,
                          const char *usage, char *message)
{
  const char *p = args->args[i];
  if (p == NULL)
    return true;
  size_t n = args->lengths[i];
  if (n > max) {
    init_error(message, usage, "%s is longer than %zu bytes", what, max);
    return false;
  }
  if (memchr(p, '\0', n) != NULL) {
    init_error(message, usage, "%s must not contain NUL bytes", what);
    return false;
  }
  return true;
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
  if (args->arg_type[0] != STRING_RESULT) {
    init_error(message, spec->usage, "function must be a string");
    return 1;
  }
  if (args->args[0] != NULL && args->lengths[0] == 0) {
    init_error(message, spec->usage, "function must not be empty");
    return 1;
  }
  if (!const_name_ok(args, 0, MAX_FUNCTION, "function", spec->usage, message))
    return 1;
  args->arg_type[1] = STRING_RESULT;
  if (spec->kind == JOB_EPOCH) {
    if (!is_number(args->arg_type[2])) {
      init_error(message, spec->usage, "unix_time must be a number like UNIX_TIMESTAMP() + 60");
      return 1;
    }
    args->arg_type[2] = INT_RESULT;
  }
  if (args->arg_count == fixed + 1) {
    /* A number (NEW.id) needs no check, and its value here is still binary: mysqld makes
     * it the digits only for the row calls. */
    if (args->arg_type[fixed] == STRING_RESULT &&
        !const_name_ok(args, fixed, MAX_UNIQUE, "unique", spec->usage, message))
      return 1;
    args->arg_type[fixed] = STRING_RESULT;
  }

  struct call *call = calloc(1, sizeof *call);
  if (call == NULL) {
    init_error(message, spec->usage, "out of memory");
    return 1;
  }
  call->spec = spec;
  initid->ptr = (char *)call;
  initid->maybe_null = 1;
  initid->const_item = 0;
  initid->max_length = spec->kind == JOB_FOREGROUND ? FOREGROUND_MAX_LENGTH
                                                     : GEARMAN_JOB_HANDLE_SIZE;
  config_refresh();
  return 0;
}

static void call_deinit(UDF_INIT *initid)
{
  struct call *call = (struct call *)initid->ptr;
  if (call != NULL) {
    free(call->buf);
    free(call);
    initid->ptr = NULL;
  }
}

/* A row-time check of a non-constant name; false (and a log line) if unusable. */
static bool row_name_ok(const char *p, size_t n, size_t max, const char *what,
                        const struct udf_spec *spec)
{
  if (n <= max && memchr(p, '\0', n) == NULL)
    return true;
  UDF_LOG(&g_misc_log, "%s: %s longer than %zu bytes or containing NUL; job not submitted",
          spec->usage, what, max);
  return false;
}

static char *job_row(UDF_INIT *initid, UDF_ARGS *args, unsigned long *length,
                     udf_flag *is_null, udf_flag *error)
{
  struct call *call = (struct call *)initid->ptr;
  const struct udf_spec *spec = call->spec;
  unsigned fixed = spec->kind == JOB_EPOCH ? 3 : 2;
  struct job job = {
    .function = call->function,
    .function_len = args->lengths[0],
    .workload = args->args[1] && args->lengths[1] ? args->args[1] : NULL,
    .workload_len = args->args[1] ? args->lengths[1] : 0,
  };
  (void)error; /* a failed submit is NULL, never an error: see the header comment */
  *is_null = 1;
  if (args->args[0] == NULL || job.function_len == 0 ||
      !row_name_ok(args->args[0], job.function_len, MAX_FUNCTION, "function", spec))
    return NULL;
  memcpy(call->function, args->args[0], job.function_len);
  call->function[job.function_len] = '\0';
  if (spec->kind == JOB_EPOCH) {
    if (args->args[2] == NULL)
      return NULL;
    long long when = *(long long *)args->args[2];
    if (when < 0) {
      UDF_LOG(&g_misc_log, "%s: unix_time %lld is negative; job not submitted",
              spec->usage, when);
      return NULL;
    }
    job.epoch = (time_t)when;
  }
  if (args->arg_count > fixed && args->args[fixed] != NULL && args->lengths[fixed] > 0) {
    job.unique_len = args->lengths[fixed];
    if (!row_name_ok(args->args[fixed], job.unique_len, MAX_UNIQUE, "unique", spec))
      return NULL;
    memcpy(call->unique, args->args[fixed], job.unique_len);
    call->unique[job.unique_len] = '\0';
  } else {
    unique_generate(call->unique);
    job.unique_len = GENERATED_UNIQUE_LEN;
  }
  job.unique = call->unique;
  if (!submit(call, &job))
    return NULL;
  *is_null = 0;
  *length = call->len;
  return call->buf;
}

/* The three entry points of one job function; all of them share job_init and job_row. */
#define JOB_UDF(name, usage_text, job_kind, job_priority)                                 \
  static const struct udf_spec name##_spec = { usage_text, job_kind, job_priority };       \
  UDF_EXPORT udf_bool name##_init(UDF_INIT *initid, UDF_ARGS *args, char *message)         \
  {                                                                                        \
    return job_init(&name##_spec, initid, args, message);                                  \
  }                                                                                        \
  UDF_EXPORT void name##_deinit(UDF_INIT *initid)                                          \
  {                                                                                        \
    call_deinit(initid);                                                                   \
  }                                                                                        \
  UDF_EXPORT char *name(UDF_INIT *initid, UDF_ARGS *args, char *result,                    \
                        unsigned long *length, udf_flag *is_null, udf_flag *error)         \
  {                                                                                        \
    (void)result;                                                                          \
    return job_row(initid, args, length, is_null, error);                                  \
  }

JOB_UDF(gman_do_background, "gman_do_background(function, workload [, unique])",
        JOB_BACKGROUND, GEARMAN_JOB_PRIORITY_NORMAL)
JOB_UDF(gman_do_high_background, "gman_do_high_background(function, workload [, unique])",
        JOB_BACKGROUND, GEARMAN_JOB_PRIORITY_HIGH)
JOB_UDF(gman_do_low_background, "gman_do_low_background(function, workload [, unique])",
        JOB_BACKGROUND, GEARMAN_JOB_PRIORITY_LOW)
JOB_UDF(gman_do_epoch_background,
        "gman_do_epoch_background(function, workload, unix_time [, unique])",
        JOB_EPOCH, GEARMAN_JOB_PRIORITY_NORMAL)
JOB_UDF(gman_do, "gman_do(function, workload [, unique])",
        JOB_FOREGROUND, GEARMAN_JOB_PRIORITY_NORMAL)
JOB_UDF(gman_do_high, "gman_do_high(function, workload [, unique])",
        JOB_FOREGROUND, GEARMAN_JOB_PRIORITY_HIGH)
JOB_UDF(gman_do_low, "gman_do_low(function, workload [, unique])",
        JOB_FOREGROUND, GEARMAN_JOB_PRIORITY_LOW)

/* ---------------------------------------------------------------- gman_servers_set */

static const struct udf_spec servers_set_spec = {
  "gman_servers_set(servers)", JOB_BACKGROUND, GEARMAN_JOB_PRIORITY_NORMAL
};

UDF_EXPORT udf_bool gman_servers_set_init(UDF_INIT *initid, UDF_ARGS *args, char *message)
{
  const char *usage = servers_set_spec.usage;
  if (args->arg_count != 1 || args->arg_type[0] != STRING_RESULT) {
    init_error(message, usage, "expects one string like 'host:port,host:port'");
    return 1;
  }
  config_refresh();
  pthread_mutex_lock(&g_config_lock);
  bool allowed = g_config.allow_servers_set;
  pthread_mutex_unlock(&g_config_lock);
  if (!allowed) {
    init_error(message, usage, "refused: allow_servers_set=0 in %s", config_path());
    return 1;
  }
  struct server parsed[MAX_SERVERS];
  unsigned n;
  if (args->args[0] != NULL && !parse_servers(args->args[0], args->lengths[0], parsed, &n)) {
    init_error(message, usage, "expected host:port[,host:port...] (at most %d)", MAX_SERVERS);
    return 1;
  }
  struct call *call = calloc(1, sizeof *call);
  if (call == NULL) {
    init_error(message, usage, "out of memory");
    return 1;
  }
  call->spec = &servers_set_spec;
  initid->ptr = (char *)call;
  initid->maybe_null = 1;
  initid->max_length = MAX_SERVERS * (MAX_HOST + 8);
  return 0;
}

UDF_EXPORT void gman_servers_set_deinit(UDF_INIT *initid)
{
  call_deinit(initid);
}

UDF_EXPORT char *gman_servers_set(UDF_INIT *initid, UDF_ARGS *args, char *result,
                                  unsigned long *length, udf_flag *is_null, udf_flag *error)
{
  struct call *call = (struct call *)initid->ptr;
  struct config c;
  (void)result;
  (void)error;
  *is_null = 1;
  if (args->args[0] == NULL || !parse_servers(args->args[0], args->lengths[0], c.servers,
                                              &c.nservers)) {
    UDF_LOG(&g_misc_log, "gman_servers_set: expected host:port[,host:port...]; ignored");
    return NULL;
  }
  pthread_mutex_lock(&g_config_lock);
  bool allowed = g_config.allow_servers_set;
  if (allowed) {
    g_servers_override = c;
    struct config next = g_config;
    memcpy(next.servers, c.servers, sizeof c.servers);
    next.nservers = c.nservers;
    config_publish(&next);
  }
  pthread_mutex_unlock(&g_config_lock);
  if (!allowed || !call_reserve(call, args->lengths[0] + 1))
    return NULL;
  memcpy(call->buf, args->args[0], args->lengths[0]);
  *length = args->lengths[0];
  *is_null = 0;
  return call->buf;
}

/* ---------------------------------------------------------------- gman_udf_status */

/* Append s as a JSON string; returns the new length, or len unchanged if it won't fit. */
static size_t json_str(char *buf, size_t cap, size_t len, const char *s)
{
  size_t start = len;
  if (len + 2 > cap)
    return start;
  buf[len++] = '"';
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (len + 8 > cap)
      return start;
    if (ch == '"' || ch == '\\') {
      buf[len++] = '\\';
      buf[len++] = (char)ch;
    } else if (ch < 0x20) {
      len += (size_t)snprintf(buf + len, cap - len, "\\u%04x", ch);
    } else {
      buf[len++] = (char)ch;
    }
  }
  buf[len++] = '"';
  return len;
}

#define APPEND(...)                                                                        \
  do {                                                                                     \
    int w_ = snprintf(buf + len, cap - len, __VA_ARGS__);                                  \
    if (w_ > 0)                                                                            \
      len = len + (size_t)w_ < cap ? len + (size_t)w_ : cap - 1;                           \
  } while (0)

static size_t status_json(char *buf, size_t cap)
{
  struct config c;
  uint64_t generation;
  size_t len = 0;
  config_snapshot(&c, &generation);
  APPEND("{\"version\":\"%s\",\"config\":", GMU_VERSION);
  len = json_str(buf, cap, len, config_path());
  APPEND(",\"servers\":[");
  for (unsigned i = 0; i < c.nservers; i++) {
    char one[MAX_HOST + 16];
    bool v6 = strchr(c.servers[i].host, ':') != NULL;
    snprintf(one, sizeof one, v6 ? "[%s]:%u" : "%s:%u", c.servers[i].host, c.servers[i].port);
    if (i)
      APPEND(",");
    len = json_str(buf, cap, len, one);
  }
  APPEND("],\"timeout_ms\":%d,\"backoff_ms\":%d,\"allow_servers_set\":%s,"
         "\"config_generation\":%llu,\"counters\":{", c.timeout_ms, c.backoff_ms,
         c.allow_servers_set ? "true" : "false", (unsigned long long)generation);
  for (int i = 0; i < C_COUNT; i++)
    APPEND("%s\"%s\":%llu", i ? "," : "", counter_names[i],
           (unsigned long long)__atomic_load_n(&g_counters[i], __ATOMIC_RELAXED));
  APPEND("}}");
  return len;
}

UDF_EXPORT udf_bool gman_udf_status_init(UDF_INIT *initid, UDF_ARGS *args, char *message)
{
  if (args->arg_count != 0) {
    init_error(message, "gman_udf_status()", "takes no arguments");
    return 1;
  }
  struct call *call = calloc(1, sizeof *call);
  if (call == NULL || !call_reserve(call, STATUS_BUF)) {
    free(call);
    init_error(message, "gman_udf_status()", "out of memory");
    return 1;
  }
  initid->ptr = (char *)call;
  initid->maybe_null = 0;
  initid->const_item = 0;
  initid->max_length = STATUS_BUF;
  config_refresh();
  return 0;
}

UDF_EXPORT void gman_udf_status_deinit(UDF_INIT *initid)
{
  call_deinit(initid);
}

UDF_EXPORT char *gman_udf_status(UDF_INIT *initid, UDF_ARGS *args, char *result,
                                 unsigned long *length, udf_flag *is_null, udf_flag *error)
{
  struct call *call = (struct call *)initid->ptr;
  (void)args;
  (void)result;
  (void)error;
  *is_null = 0;
  *length = status_json(call->buf, call->cap);
  return call->buf;
}
