/*
 * gearman_udf.c: submit Gearman jobs from MySQL/MariaDB (replaces gearman-mysql-udf 0.6).
 *
 * SQL functions (RETURNS STRING but gman_sum, see sql/install.sql):
 *
 *   gman_do_background(function, workload [, unique])       -> job handle, or NULL
 *   gman_do_high_background / gman_do_low_background        -> same, other priority
 *   gman_do_epoch_background(function, workload, unix_time [, unique]) -> job handle, or NULL
 *   gman_ship(function, workload [, unique])                 -> the unique sent, or NULL: a
 *                                 background job whose acknowledgement is read later
 *   gman_do(function, workload [, unique])                   -> the worker's result, or NULL
 *   gman_do_high / gman_do_low                               -> same, other priority
 *   gman_sum(function, workload)  AGGREGATE, RETURNS INTEGER -> the sum of the group's
 *                                 results, its jobs run side by side; NULL if one fails
 *   gman_servers_set(servers [, function])                   -> servers, or an error
 *   gman_udf_status()                                        -> JSON: config and counters
 *
 * The UDF contract (as in MariaDB's udf_example.c):
 *   - xxx_init runs once per statement: it checks and coerces the arguments and is the
 *     only place a message reaches the user; per-statement state lives in initid->ptr
 *     and is freed in xxx_deinit.
 *   - xxx runs once per row, from any mysqld thread, concurrently with other sessions.
 *     An aggregate (gman_sum) has xxx_clear when a group begins, xxx_add per row and xxx
 *     for the group's value.
 *   - string arguments are pointer plus length: never NUL-terminated, never written to.
 *
 * Decisions:
 *   - NULL function or NULL unix_time: NULL result, nothing submitted. NULL workload: an
 *     empty workload is submitted (a trigger's event is not dropped because one column was
 *     NULL). NULL or empty unique: the UDF makes one that no other job shares (a random
 *     per-load prefix and a counter), so gearmand coalesces nothing.
 *   - A function name or unique with whitespace or a control character is refused: by
 *     xxx_init when written as a literal, else that row gives NULL and a log line (a bad
 *     NEW.col must not fail the user's INSERT). gearmand's text admin protocol prints
 *     function names in tab- and newline-separated lines, so such a name could forge the
 *     lines that `workerhost status` and metrics read.
 *   - One deadline per call: timeout_ms bounds the whole call (name lookup, connect,
 *     submit, every status or data packet, the result). When it passes, the call returns
 *     NULL and the connection is dropped; no KILL is needed to end a call. For gman_sum
 *     the call is a group: timeout_ms from its first row bounds all its jobs.
 *   - A job is submitted at most once per call. The one exception is a connection lost
 *     before gearmand acknowledged the job (JOB_CREATED): then it is sent again, on a new
 *     connection (a reused one may have outlived a gearmand restart) or to the next server.
 *     A failed job (WORK_FAIL, WORK_EXCEPTION) and a timeout are never submitted again.
 *   - gman_ship sends its job and returns without waiting for gearmand's JOB_CREATED: the
 *     acknowledgements are read by the thread's next gman_ship calls, which wait only while
 *     SHIP_WINDOW of them are owed, and then for one. Ships have a connection per server of
 *     their own, so that no other call queues behind them. A row then costs one send()
 *     instead of a round trip and two context switches. It is
 *     for jobs something else keeps until they are done: the host's ledger rows, which the
 *     relay ships again when gearmand never took them. A job lost in transit or refused
 *     afterwards (logged, counted as ship_unacknowledged or ship_refused) is not reported
 *     to the caller: NULL means only that nothing could be sent (no server reachable, or a
 *     send that failed). A server that leaves SHIP_WINDOW jobs unacknowledged for
 *     timeout_ms is backed off like one that does not acknowledge a submit in time.
 *   - Back-off: a server that fails (no address, refuses, resets, answers ERROR, does not
 *     acknowledge a submit in time) is skipped by every thread for backoff_ms and the next
 *     one is tried. A foreground job that no worker finishes in time is no fault of the
 *     server: the server is not backed off for it.
 *   - Failure (no server reachable, timeout, worker failed) returns NULL and logs a
 *     rate-limited line to stderr, which is mysqld's error log. A row never raises an
 *     error: a trigger must not make the user's INSERT fail because gearmand is down.
 *
 * The Gearman protocol (seven submit requests, eight responses) is spoken here over a
 * non-blocking socket of our own instead of through libgearman 1.1.20/1.1.21, which pins
 * SO_SNDBUF and SO_RCVBUF at 32 KB: on loopback, where one segment is 64 KB, every segment
 * then waits for the peer's delayed ACK, and 16 MB took ten seconds. libgearman also bounds
 * each wait rather than the call, reports a timeout as GEARMAN_UNKNOWN_STATE and an
 * unresolvable host as a memory failure, and lingers up to 10 s in close().
 *
 * Configuration: a key=value file named by mysqld's environment variable
 * GEARMAN_UDF_CONFIG (default /etc/mysql/gearman_udf.conf), owned by whoever runs mysqld:
 *   servers=host:port[,host:port...]   tried in order, at most 16; default 127.0.0.1:4730
 *   servers.FUNCTION=host:port[,...]   FUNCTION's own servers instead (at most 32 functions)
 *   timeout_ms=1000                    bounds each call as a whole
 *   backoff_ms=1000                    how long a failed server is skipped
 *   allow_servers_set=0|1              whether gman_servers_set() may change servers; 0
 * It is re-read when it changes (checked at most once a second, from xxx_init). It fails
 * closed: a file that cannot be read or has a line that does not parse (unknown keys and
 * repeated keys included) leaves the UDF with no servers, for any function, and
 * allow_servers_set off, and says why once in the error log and in gman_udf_status().
 * Only a missing file means the defaults. '#' starts a comment.
 *
 * Routes: a function with a servers.FUNCTION line (or a gman_servers_set(servers,
 * function) call) uses only its own list; every other function uses servers=. The lists
 * name at most 32 distinct servers together; a server named in several lists is one
 * server, with one connection per thread and one back-off. What gman_servers_set() sets,
 * for the default list or a function, is laid over the file's lists and lasts until the
 * file changes to disallow it.
 *
 * Connections: each mysqld thread keeps one connection per server and reuses it for
 * every row and statement; it is dropped after a failure and after a config change.
 * Thread states sit in a registry so that the library destructor can free them: MariaDB
 * unloads this library when the last function is dropped, and a thread that exits
 * afterwards must not call back into unmapped code.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <mysql.h>

/* MySQL 8 dropped my_bool: its UDF_INIT uses bool and the row flags are unsigned char. */
#if defined(MARIADB_BASE_VERSION) || MYSQL_VERSION_ID < 80000
typedef char udf_bool;
typedef char udf_flag;
#else
typedef bool udf_bool;
typedef unsigned char udf_flag;
#endif

#define UDF_EXPORT __attribute__((visibility("default")))

/*
 * Every SQL function of the library, listed once. The declarations below, the MySQL 8
 * signature check (compat/mysql8_signatures.c) and tests/test_udf_list.py (against
 * sql/install.sql and sql/uninstall.sql, and the symbols the .so exports) all read it.
 * STRING(name): name, name_init and name_deinit, RETURNS STRING; AGGREGATE(name): also
 * name_clear and name_add, RETURNS INTEGER.
 */
#define GMU_FUNCTIONS(STRING, AGGREGATE)                                                    \
  STRING(gman_do_background)                                                                \
  STRING(gman_do_high_background)                                                           \
  STRING(gman_do_low_background)                                                            \
  STRING(gman_do_epoch_background)                                                          \
  STRING(gman_ship)                                                                         \
  STRING(gman_do)                                                                           \
  STRING(gman_do_high)                                                                      \
  STRING(gman_do_low)                                                                       \
  AGGREGATE(gman_sum)                                                                       \
  STRING(gman_servers_set)                                                                  \
  STRING(gman_udf_status)

/*
 * UDF_ARGS as both servers pass it. Their server headers declare each argument's name
 * (attributes) after maybe_null, as MariaDB's udf_example.c reads them; Connector/C's copy
 * of the struct, which MariaDB builds compile against, ends at maybe_null.
 */
struct udf_args_layout {
  unsigned int arg_count;
  enum Item_result *arg_type;
  char **args;
  unsigned long *lengths;
  char *maybe_null;
  char **attributes;
  unsigned long *attribute_lengths;
};
_Static_assert(offsetof(struct udf_args_layout, maybe_null) == offsetof(UDF_ARGS, maybe_null),
               "UDF_ARGS starts as mysqld's does");

/* The size of the message buffer xxx_init may fill; MYSQL_ERRMSG_SIZE in both servers. */
#ifdef MYSQL_ERRMSG_SIZE
#define MESSAGE_SIZE MYSQL_ERRMSG_SIZE
#else
#define MESSAGE_SIZE 512
#endif
/* ...of which the user sees this much: "Can't initialize function '%s'; %-.80s". */
#define MESSAGE_SHOWN 80

#define GMU_VERSION "1.1.0"
#define CONFIG_ENV "GEARMAN_UDF_CONFIG"
#define CONFIG_DEFAULT_PATH "/etc/mysql/gearman_udf.conf"
#define DEFAULT_HOST "127.0.0.1"
#define DEFAULT_PORT 4730
#define DEFAULT_TIMEOUT_MS 1000
#define DEFAULT_BACKOFF_MS 1000
#define MAX_DURATION_MS 600000   /* ten minutes: anything longer is a typo */
#define CONFIG_CHECK_EVERY_MS 1000 /* at most one stat() of the config file a second */
#define CONFIG_ERROR_SIZE 256     /* the first problem of a refused file, as status shows it */
#define LOG_EVERY_MS 10000        /* at most one log line per source every ten seconds */
#define MAX_SERVERS 16      /* in one list: the default one, or one function's */
#define MAX_SLOTS 32        /* distinct servers in all lists together */
#define MAX_ROUTES 32       /* functions with servers of their own (servers.FUNCTION=) */
#define ROUTE_NAMES_SIZE 4096 /* their names, each with its NUL, all together */
#define ROUTE_PREFIX "servers."
#define MAX_HOST 256
/* gearmand's limits, each a buffer that also holds a NUL (GEARMAN_MAX_UNIQUE_SIZE 64,
 * GEARMAN_FUNCTION_MAX_SIZE 512, GEARMAN_JOB_HANDLE_SIZE 64). */
#define MAX_UNIQUE 63
#define MAX_FUNCTION 511
#define MAX_HANDLE 63
#define FOREGROUND_MAX_LENGTH 16777215 /* MEDIUMBLOB: a worker result may be large */
/* No packet or result is longer than the largest max_allowed_packet, 1 GiB: mysqld could
 * not return it, and a worker that streams WORK_DATA must not fill our memory. */
#define MAX_PACKET (1u << 30)
/* unix_time above 2106-02-07 is a mistake (milliseconds?) that would sit in gearmand's
 * queue for ever. */
#define MAX_EPOCH 4294967295LL
#define IN_BUFFER_MIN 65536        /* a connection's first receive buffer */
#define IN_BUFFER_KEEP (1 << 20)   /* a larger one, grown for a big result, is freed after */
#define SHIP_WINDOW 1024           /* gman_ship acknowledgements owed on a connection, at most */
/* gman_udf_status() at its largest: every list full of the longest names, every byte of a
 * route's name escaped, and room for the rest. */
#define STATUS_BUF ((MAX_ROUTES + 1) * MAX_SERVERS * (MAX_HOST + 12) + 6 * ROUTE_NAMES_SIZE + \
                    4096)

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

/* Up to 40 bytes of s for a message, each control byte shown as '?'; out has 41 bytes. */
static const char *shown(const char *s, size_t n, char *out)
{
  size_t i;
  for (i = 0; i < n && i < 40; i++)
    out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  out[i] = '\0';
  return out;
}

/* ---------------------------------------------------------------- counters */

enum counter {
  C_SUBMITTED,
  C_FAILED,
  C_TIMED_OUT,
  C_RESUBMITTED,
  C_CONNECTIONS_OPENED,
  C_RECONNECTS,
  C_SKIPPED_BACKOFF,
  C_SHIP_REFUSED,
  C_SHIP_UNACKNOWLEDGED,
  C_COUNT
};

static const char *const counter_names[C_COUNT] = {
  "submitted", "failed", "timed_out", "resubmitted", "connections_opened", "reconnects",
  "skipped_backoff", "ship_refused", "ship_unacknowledged",
};

/* Process-wide statistics; only ever touched with atomic adds and loads. */
static uint64_t g_counters[C_COUNT];

static void count_n(enum counter c, uint64_t n)
{
  __atomic_fetch_add(&g_counters[c], n, __ATOMIC_RELAXED);
}

static void count(enum counter c)
{
  count_n(c, 1);
}

/* ---------------------------------------------------------------- configuration */

struct server {
  char host[MAX_HOST];
  in_port_t port;
};

/* Servers tried in order, as indexes into config.slots. */
struct server_list {
  uint8_t slot[MAX_SERVERS];
  unsigned n;
};

/* A function with servers of its own; its name, NUL-terminated, is config.names + name_at. */
struct route {
  uint16_t name_at;
  uint16_t name_len;
  struct server_list list;
};

/*
 * Every server named anywhere sits in one slot, once, so that the default list and the
 * routes that name the same server share its connection and its back-off: connections,
 * g_down_until and g_server_log are indexed by slot.
 */
struct config {
  struct server slots[MAX_SLOTS];
  unsigned nslots;
  struct server_list servers;       /* the default list: servers= */
  struct route routes[MAX_ROUTES];  /* servers.FUNCTION= */
  unsigned nroutes;
  char names[ROUTE_NAMES_SIZE];
  unsigned names_len;
  int timeout_ms;
  int backoff_ms;
  bool allow_servers_set;
  char error[CONFIG_ERROR_SIZE]; /* why the file was refused; empty when it was taken */
};

/* Keep the first problem found, cut to fit. */
__attribute__((format(printf, 2, 3)))
static void config_error(struct config *c, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->error, sizeof c->error, fmt, ap);
  va_end(ap);
}

static void config_defaults(struct config *c)
{
  memset(c, 0, sizeof *c);
  snprintf(c->slots[0].host, MAX_HOST, "%s", DEFAULT_HOST);
  c->slots[0].port = DEFAULT_PORT;
  c->nslots = 1;
  c->servers.n = 1;
  c->timeout_ms = DEFAULT_TIMEOUT_MS;
  c->backoff_ms = DEFAULT_BACKOFF_MS;
}

/* Fail closed: no server in any list. */
static void config_no_servers(struct config *c)
{
  c->nslots = 0;
  c->servers.n = 0;
  c->nroutes = 0;
  c->names_len = 0;
}

/* Whether byte ch would break gearmand's text protocols (whitespace, control, NUL). */
static bool is_blank_or_control(char ch)
{
  return (unsigned char)ch <= ' ' || ch == 0x7f;
}

/* What is wrong with a function name or unique of n bytes, or NULL if nothing. */
static const char *name_problem(const char *p, size_t n, size_t max)
{
  if (n > max)
    return max == MAX_FUNCTION ? "is longer than 511 bytes" : "is longer than 63 bytes";
  for (size_t i = 0; i < n; i++)
    if (is_blank_or_control(p[i]))
      return "must not contain whitespace or control characters";
  return NULL;
}

static int config_find_route(const struct config *c, const char *name, size_t len)
{
  for (unsigned r = 0; r < c->nroutes; r++)
    if (c->routes[r].name_len == len && memcmp(c->names + c->routes[r].name_at, name, len) == 0)
      return (int)r;
  return -1;
}

/* The servers for function (n bytes): its own, or else the default list. */
static const struct server_list *config_servers_for(const struct config *c, const char *function,
                                                   size_t n)
{
  int r = config_find_route(c, function, n);
  return r < 0 ? &c->servers : &c->routes[r].list;
}

/* Drop the slots that no list names any more, so that a replaced list frees its slots. */
static void config_compact(struct config *c)
{
  bool used[MAX_SLOTS] = { false };
  uint8_t moved[MAX_SLOTS];
  for (unsigned k = 0; k < c->servers.n; k++)
    used[c->servers.slot[k]] = true;
  for (unsigned r = 0; r < c->nroutes; r++)
    for (unsigned k = 0; k < c->routes[r].list.n; k++)
      used[c->routes[r].list.slot[k]] = true;
  unsigned kept = 0;
  for (unsigned i = 0; i < c->nslots; i++) {
    if (!used[i])
      continue;
    if (kept != i)
      c->slots[kept] = c->slots[i];
    moved[i] = (uint8_t)kept++;
  }
  c->nslots = kept;
  for (unsigned k = 0; k < c->servers.n; k++)
    c->servers.slot[k] = moved[c->servers.slot[k]];
  for (unsigned r = 0; r < c->nroutes; r++)
    for (unsigned k = 0; k < c->routes[r].list.n; k++)
      c->routes[r].list.slot[k] = moved[c->routes[r].list.slot[k]];
}

/*
 * Make servers[0..n) the list of function (len bytes; NULL for the default list), replacing
 * what it had. False and a reason if it does not fit; c is then unusable (callers work on a
 * copy, or fail closed).
 */
static bool config_set_servers(struct config *c, const char *function, size_t len,
                               const struct server *servers, unsigned n, char *why, size_t size)
{
  struct server_list *list = &c->servers;
  if (function != NULL) {
    int r = config_find_route(c, function, len);
    if (r < 0) {
      if (c->nroutes == MAX_ROUTES) {
        snprintf(why, size, "more than %d functions with servers of their own", MAX_ROUTES);
        return false;
      }
      if (len + 1 > ROUTE_NAMES_SIZE - c->names_len) {
        snprintf(why, size, "the names of functions with servers of their own are over %d "
                 "bytes in all", ROUTE_NAMES_SIZE);
        return false;
      }
      r = (int)c->nroutes++;
      c->routes[r].name_at = (uint16_t)c->names_len;
      c->routes[r].name_len = (uint16_t)len;
      memcpy(c->names + c->names_len, function, len);
      c->names[c->names_len + len] = '\0';
      c->names_len += (unsigned)len + 1;
    }
    list = &c->routes[r].list;
  }
  list->n = 0;
  config_compact(c);
  for (unsigned k = 0; k < n; k++) {
    unsigned i = 0;
    while (i < c->nslots && !(c->slots[i].port == servers[k].port &&
                              strcmp(c->slots[i].host, servers[k].host) == 0))
      i++;
    if (i == c->nslots) {
      if (c->nslots == MAX_SLOTS) {
        snprintf(why, size, "more than %d servers in all lists together", MAX_SLOTS);
        return false;
      }
      c->slots[c->nslots++] = servers[k];
    }
    list->slot[list->n++] = (uint8_t)i;
  }
  return true;
}

/* "host[:port]" or "[v6addr][:port]" of n bytes; false and a reason in why if malformed. */
static bool parse_server(const char *s, size_t n, struct server *out, char *why, size_t size)
{
  char echo[41];
  for (size_t i = 0; i < n; i++) {
    if (is_blank_or_control(s[i])) {
      snprintf(why, size, "whitespace or a control character in '%s'", shown(s, n, echo));
      return false;
    }
  }
  const char *host = s, *port = NULL;
  size_t host_len = n;
  if (n > 0 && s[0] == '[') {
    const char *close = memchr(s, ']', n);
    if (close == NULL || (close + 1 < s + n && close[1] != ':'))
      goto malformed;
    host = s + 1;
    host_len = (size_t)(close - host);
    if (close + 1 < s + n)
      port = close + 2;
  } else {
    const char *colon = memchr(s, ':', n);
    if (colon != NULL) {
      host_len = (size_t)(colon - s);
      port = colon + 1;
    }
  }
  if (host_len == 0 || host_len >= MAX_HOST)
    goto malformed;
  for (size_t i = 0; i < host_len; i++) {
    char ch = host[i];
    if (!(ch == '.' || ch == '-' || ch == '_' || ch == ':' || (ch >= '0' && ch <= '9') ||
          (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
      goto malformed;
  }
  long portnum = DEFAULT_PORT;
  if (port != NULL) {
    size_t port_len = (size_t)(s + n - port);
    if (port_len == 0 || port_len > 5)
      goto malformed;
    portnum = 0;
    for (size_t i = 0; i < port_len; i++) {
      if (port[i] < '0' || port[i] > '9')
        goto malformed;
      portnum = portnum * 10 + (port[i] - '0');
    }
    if (portnum < 1 || portnum > 65535)
      goto malformed;
  }
  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  out->port = (in_port_t)portnum;
  return true;

malformed:
  snprintf(why, size, "'%s' is not host:port (port 1..65535)", shown(s, n, echo));
  return false;
}

/* A comma-separated list of n bytes; spaces around the commas are allowed. */
static bool parse_servers(const char *s, size_t n, struct server *out, unsigned *count_out,
                          char *why, size_t size)
{
  unsigned count = 0;
  const char *end = s + n;
  char reason[128];
  for (;;) {
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *a = s, *b = comma ? comma : end;
    while (a < b && *a == ' ')
      a++;
    while (b > a && b[-1] == ' ')
      b--;
    if (count == MAX_SERVERS) {
      snprintf(why, size, "more than %d servers", MAX_SERVERS);
      return false;
    }
    if (a == b) {
      snprintf(why, size, "server %u is empty", count + 1);
      return false;
    }
    if (!parse_server(a, (size_t)(b - a), &out[count], reason, sizeof reason)) {
      snprintf(why, size, "server %u: %s", count + 1, reason);
      return false;
    }
    count++;
    if (comma == NULL)
      break;
    s = comma + 1;
  }
  *count_out = count;
  return true;
}

static bool parse_ms(const char *s, int *out)
{
  long v = 0;
  if (*s == '\0' || strlen(s) > 6)
    return false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9')
      return false;
    v = v * 10 + (*s - '0');
  }
  if (v < 1 || v > MAX_DURATION_MS)
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

/* s without the spaces and tabs around it; writes a NUL after the last byte kept. */
static char *trim(char *s)
{
  while (*s == ' ' || *s == '\t')
    s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
    *--e = '\0';
  return s;
}

enum config_key { K_SERVERS, K_TIMEOUT_MS, K_BACKOFF_MS, K_ALLOW_SERVERS_SET, K_COUNT };
static const char *const config_keys[K_COUNT] = {
  "servers", "timeout_ms", "backoff_ms", "allow_servers_set",
};

/* servers.FUNCTION=value: the function's own servers, replacing the default list for it. */
static bool config_route_line(const char *function, const char *value, struct config *c,
                              char *why, size_t size)
{
  char echo[41], reason[160];
  size_t len = strlen(function);
  const char *problem = len == 0 ? "is empty" : name_problem(function, len, MAX_FUNCTION);
  if (problem != NULL) {
    snprintf(why, size, ROUTE_PREFIX "FUNCTION: the function name %s", problem);
    return false;
  }
  if (config_find_route(c, function, len) >= 0) {
    snprintf(why, size, ROUTE_PREFIX "%s given twice", shown(function, len, echo));
    return false;
  }
  struct server parsed[MAX_SERVERS];
  unsigned n;
  if (!parse_servers(value, strlen(value), parsed, &n, reason, sizeof reason) ||
      !config_set_servers(c, function, len, parsed, n, reason, sizeof reason)) {
    snprintf(why, size, ROUTE_PREFIX "%s: %s", shown(function, len, echo), reason);
    return false;
  }
  return true;
}

/* Apply one line of n bytes (its newline removed) to c; false and a reason if it is bad. */
static bool config_line(char *line, size_t n, struct config *c, bool given[K_COUNT],
                        char *why, size_t size)
{
  char echo[41];
  if (memchr(line, '\0', n) != NULL) {
    snprintf(why, size, "a NUL byte");
    return false;
  }
  char *comment = strchr(line, '#');
  if (comment != NULL)
    *comment = '\0';
  char *s = trim(line);
  if (*s == '\0' || *s == ';')
    return true;
  char *eq = strchr(s, '=');
  if (eq == NULL) {
    snprintf(why, size, "expected key=value, got '%s'", shown(s, strlen(s), echo));
    return false;
  }
  *eq = '\0';
  char *key = trim(s), *value = trim(eq + 1);
  if (strncmp(key, ROUTE_PREFIX, sizeof ROUTE_PREFIX - 1) == 0)
    return config_route_line(key + sizeof ROUTE_PREFIX - 1, value, c, why, size);
  int k = 0;
  while (k < K_COUNT && strcmp(key, config_keys[k]) != 0)
    k++;
  if (k == K_COUNT) {
    snprintf(why, size, "unknown key '%s' (known: servers, servers.FUNCTION, timeout_ms, "
             "backoff_ms, allow_servers_set)", shown(key, strlen(key), echo));
    return false;
  }
  if (given[k]) {
    snprintf(why, size, "%s given twice", config_keys[k]);
    return false;
  }
  given[k] = true;
  char reason[160];
  switch (k) {
  case K_SERVERS: {
    struct server parsed[MAX_SERVERS];
    unsigned count;
    if (parse_servers(value, strlen(value), parsed, &count, reason, sizeof reason) &&
        config_set_servers(c, NULL, 0, parsed, count, reason, sizeof reason))
      return true;
    snprintf(why, size, "servers: %s", reason);
    return false;
  }
  case K_TIMEOUT_MS:
  case K_BACKOFF_MS:
    if (parse_ms(value, k == K_TIMEOUT_MS ? &c->timeout_ms : &c->backoff_ms))
      return true;
    snprintf(why, size, "%s: expected milliseconds 1..%d, got '%s'", config_keys[k],
             MAX_DURATION_MS, shown(value, strlen(value), echo));
    return false;
  default:
    if (parse_flag(value, &c->allow_servers_set))
      return true;
    snprintf(why, size, "allow_servers_set: expected 0 or 1, got '%s'",
             shown(value, strlen(value), echo));
    return false;
  }
}

#define CLOSED "no servers until the file is fixed: every job gives NULL"

/* Read the file at path into c. Any problem fails closed: no servers, no gman_servers_set,
 * each problem logged and the first kept in c->error. */
static void config_load(const char *path, struct config *c)
{
  config_defaults(c);
  /* O_NONBLOCK: a FIFO in the file's place must not hang the statement in open(). */
  int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  struct stat st;
  FILE *f = NULL;
  if (fd < 0) {
    config_error(c, "%s: cannot open: %s", path, strerror(errno));
  } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    config_error(c, "%s: not a regular file", path);
    close(fd);
  } else if ((f = fdopen(fd, "r")) == NULL) {
    config_error(c, "%s: cannot read: %s", path, strerror(errno));
    close(fd);
  }
  if (f == NULL) {
    UDF_LOG(NULL, "%s; " CLOSED, c->error);
  } else {
    bool given[K_COUNT] = { false };
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
      lineno++;
      while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
      char why[CONFIG_ERROR_SIZE];
      if (!config_line(line, (size_t)n, c, given, why, sizeof why)) {
        UDF_LOG(NULL, "%s:%u: %s%s", path, lineno, why, c->error[0] ? "" : "; " CLOSED);
        if (c->error[0] == '\0')
          config_error(c, "%s:%u: %s", path, lineno, why);
      }
    }
    if (ferror(f) && c->error[0] == '\0') {
      config_error(c, "%s: read error", path);
      UDF_LOG(NULL, "%s; " CLOSED, c->error);
    }
    bool any = c->nroutes > 0;
    for (int k = 0; k < K_COUNT; k++)
      any = any || given[k];
    /* Only a missing file means the defaults: an empty one (a truncated write, a template
     * never filled in) must not send every job to whatever listens on 127.0.0.1:4730. */
    if (!any && c->error[0] == '\0') {
      config_error(c, "%s: no settings in the file (write servers=HOST:PORT,...)", path);
      UDF_LOG(NULL, "%s; " CLOSED, c->error);
    }
    free(line);
    fclose(f);
  }
  if (c->error[0] != '\0') {
    config_no_servers(c);
    c->allow_servers_set = false;
  }
}

/*
 * g_config_lock guards g_file_config (what the file says), g_overrides (what
 * gman_servers_set() set: a default list if servers.n > 0, and routes), g_config (the two
 * together, what threads copy) and the g_config_* bookkeeping.
 * g_generation is written under it and read atomically without it: a thread whose
 * snapshot has an older generation drops its connections and copies g_config again.
 * g_down_until[i] (atomic, ms on the monotonic clock) is shared by all threads: until
 * then, slot i of the current generation is skipped.
 */
#define CONFIG_DEFAULTS                                                                    \
  {                                                                                        \
    .slots = { { DEFAULT_HOST, DEFAULT_PORT } }, .nslots = 1, .servers = { { 0 }, 1 },     \
    .timeout_ms = DEFAULT_TIMEOUT_MS, .backoff_ms = DEFAULT_BACKOFF_MS,                    \
  }
static pthread_mutex_t g_config_lock = PTHREAD_MUTEX_INITIALIZER;
static struct config g_file_config = CONFIG_DEFAULTS;
static struct config g_overrides;
static struct config g_config = CONFIG_DEFAULTS;
static int64_t g_config_checked_ms = INT64_MIN / 2;
static bool g_config_loaded;
static int g_config_errno;       /* of the last stat(): 0, ENOENT (no file) or another */
static struct stat g_config_stat; /* of the last stat() that succeeded */
static uint64_t g_generation = 1;
static int64_t g_down_until[MAX_SLOTS];
static struct rate_limit g_server_log[MAX_SLOTS];
static struct rate_limit g_job_log;
static struct rate_limit g_misc_log;

static const char *config_path(void)
{
  const char *p = getenv(CONFIG_ENV);
  return p && *p ? p : CONFIG_DEFAULT_PATH;
}

static bool same_file_version(const struct stat *a, const struct stat *b)
{
  return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
         a->st_mode == b->st_mode && a->st_uid == b->st_uid &&
         a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
         a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Put list (of from's slots) into c as function's list; see config_set_servers. */
static bool config_copy_list(struct config *c, const char *function, size_t len,
                             const struct config *from, const struct server_list *list,
                             char *why, size_t size)
{
  struct server servers[MAX_SERVERS];
  for (unsigned k = 0; k < list->n; k++)
    servers[k] = from->slots[list->slot[k]];
  return config_set_servers(c, function, len, servers, list->n, why, size);
}

/* c with the lists of ov (what gman_servers_set() set); false (c unusable) if they do not
 * fit beside c's own. */
static bool config_apply_overrides(struct config *c, const struct config *ov, char *why,
                                   size_t size)
{
  if (ov->servers.n > 0 && !config_copy_list(c, NULL, 0, ov, &ov->servers, why, size))
    return false;
  for (unsigned r = 0; r < ov->nroutes; r++)
    if (!config_copy_list(c, ov->names + ov->routes[r].name_at, ov->routes[r].name_len, ov,
                          &ov->routes[r].list, why, size))
      return false;
  return true;
}

/*
 * Called with g_config_lock held: g_config becomes the file's configuration with what
 * gman_servers_set() set, as long as the file allows it, and every thread picks it up.
 */
static void config_publish(void)
{
  char why[160];
  g_config = g_file_config;
  if (!g_file_config.allow_servers_set) {
    memset(&g_overrides, 0, sizeof g_overrides);
  } else if (!config_apply_overrides(&g_config, &g_overrides, why, sizeof why)) {
    UDF_LOG(NULL, "what gman_servers_set() set does not fit beside %s: %s; dropped",
            config_path(), why);
    memset(&g_overrides, 0, sizeof g_overrides);
    g_config = g_file_config;
  }
  for (unsigned i = 0; i < MAX_SLOTS; i++)
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
  int err = stat(path, &st) == 0 ? 0 : errno;
  if (g_config_loaded && err == g_config_errno &&
      (err != 0 || same_file_version(&st, &g_config_stat))) {
    pthread_mutex_unlock(&g_config_lock);
    return;
  }

  struct config *c = &g_file_config;
  if (err == ENOENT) {
    config_defaults(c);
    UDF_LOG(NULL, "%s: no such file; submitting to %s:%d, gman_servers_set refused", path,
            DEFAULT_HOST, DEFAULT_PORT);
  } else if (err != 0) {
    config_defaults(c);
    config_error(c, "%s: %s", path, strerror(err));
    UDF_LOG(NULL, "%s; " CLOSED, c->error);
    config_no_servers(c);
  } else {
    config_load(path, c);
  }
  g_config_loaded = true;
  g_config_errno = err;
  g_config_stat = st;
  /* A runtime gman_servers_set() survives reloads as long as the file still allows it. */
  config_publish();
  pthread_mutex_unlock(&g_config_lock);
}

static void config_snapshot(struct config *out, uint64_t *generation)
{
  pthread_mutex_lock(&g_config_lock);
  *out = g_config;
  *generation = __atomic_load_n(&g_generation, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&g_config_lock);
}

/* ---------------------------------------------------------------- per-thread connections */

/* One connection to one server; received bytes wait in in[in_start, in_end). */
struct conn {
  int fd; /* -1 when closed */
  char *in;
  size_t in_start, in_end, in_cap;
  unsigned owed; /* acknowledgements of gman_ship jobs gearmand has still to send */
};

struct thread_state {
  struct thread_state *prev, *next; /* registry links, guarded by g_registry_lock */
  uint64_t generation;              /* of the config snapshot below */
  struct config config;
  struct conn conns[MAX_SLOTS];  /* one per slot of config */
  struct conn ships[MAX_SLOTS];  /* gman_ship's, one per slot too */
  bool ever_open[MAX_SLOTS]; /* slot i had a connection before: a new one reconnects */
  bool ever_shipped[MAX_SLOTS]; /* the same for ships[i] */
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

/* Close c and free its buffer (whatever was received is of no use to a new connection). */
static void conn_close(struct conn *c)
{
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  free(c->in);
  c->in = NULL;
  c->in_start = c->in_end = c->in_cap = 0;
  c->owed = 0;
}

static void thread_state_close(struct thread_state *st)
{
  for (unsigned i = 0; i < MAX_SLOTS; i++) {
    conn_close(&st->conns[i]);
    conn_close(&st->ships[i]);
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
    for (unsigned i = 0; i < MAX_SLOTS; i++)
      st->conns[i].fd = st->ships[i].fd = -1;
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

/* ---------------------------------------------------------------- the wire, within a deadline */

/* What one socket operation came to. */
enum io { IO_OK, IO_TIMEOUT, IO_LOST, IO_PROTOCOL, IO_NO_MEMORY };

static int ms_left(int64_t deadline)
{
  int64_t left = deadline - now_ms();
  return left <= 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left;
}

/* 1 when fd is ready for events (or has an error to report), 0 at the deadline. */
static int wait_fd(int fd, short events, int64_t deadline)
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
static enum io conn_open(struct conn *c, const struct server *s, int64_t deadline,
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
static bool conn_stale(const struct conn *c)
{
  struct pollfd p = { .fd = c->fd, .events = POLLIN };
  return poll(&p, 1, 0) != 0 || c->in_end != c->in_start;
}

/* Send every byte of iov[0..n), straight from the caller's buffers. */
static enum io conn_send(struct conn *c, struct iovec *iov, int n, int64_t deadline)
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
static enum io conn_fill(struct conn *c, size_t want, int64_t deadline)
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

/* Gearman's packet types, as numbered by the protocol. */
enum {
  SUBMIT_JOB = 7, JOB_CREATED = 8, WORK_STATUS = 12, WORK_COMPLETE = 13, WORK_FAIL = 14,
  SUBMIT_JOB_BG = 18, ERROR_PACKET = 19, SUBMIT_JOB_HIGH = 21, WORK_EXCEPTION = 25,
  WORK_DATA = 28, WORK_WARNING = 29, SUBMIT_JOB_HIGH_BG = 32, SUBMIT_JOB_LOW = 33,
  SUBMIT_JOB_LOW_BG = 34, SUBMIT_JOB_EPOCH = 36,
};
#define HEADER_SIZE 12

static uint32_t get_be32(const char *p)
{
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static void put_be32(char *p, uint32_t v)
{
  p[0] = (char)(v >> 24);
  p[1] = (char)(v >> 16);
  p[2] = (char)(v >> 8);
  p[3] = (char)v;
}

struct packet {
  uint32_t type;
  const char *body; /* valid until the next read on the connection */
  size_t size;
};

/* The next response packet from c. */
static enum io conn_read(struct conn *c, struct packet *p, int64_t deadline)
{
  enum io r = conn_fill(c, HEADER_SIZE, deadline);
  if (r != IO_OK)
    return r;
  const char *h = c->in + c->in_start;
  if (memcmp(h, "\0RES", 4) != 0)
    return IO_PROTOCOL;
  p->type = get_be32(h + 4);
  p->size = get_be32(h + 8);
  if (p->size > MAX_PACKET)
    return IO_PROTOCOL;
  r = conn_fill(c, HEADER_SIZE + p->size, deadline);
  if (r != IO_OK)
    return r;
  p->body = c->in + c->in_start + HEADER_SIZE;
  c->in_start += HEADER_SIZE + p->size;
  if (c->in_start == c->in_end)
    c->in_start = c->in_end = 0;
  return IO_OK;
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

/* ---------------------------------------------------------------- submitting */

enum job_kind { JOB_FOREGROUND, JOB_BACKGROUND, JOB_EPOCH };
enum priority { PRIORITY_NORMAL, PRIORITY_HIGH, PRIORITY_LOW };

struct udf_spec {
  const char *usage;    /* the signature, as shown in every init message */
  enum job_kind kind;
  enum priority priority;
  bool unacknowledged;  /* gman_ship: the acknowledgement is read later, see the header */
};

struct job {
  const char *function;
  size_t function_len;
  const char *unique;
  size_t unique_len;
  const char *workload;
  size_t workload_len;
  long long epoch;
};

/* Per-statement state in initid->ptr: the bytes the row function returns. */
struct call {
  const struct udf_spec *spec;
  char *buf;
  size_t cap;
  size_t len;
  char unique[GENERATED_UNIQUE_LEN + 1];
};

static bool call_reserve(struct call *call, size_t n)
{
  if (n <= call->cap)
    return true;
  size_t cap = call->cap * 2 > n ? call->cap * 2 : n; /* WORK_DATA may come in many parts */
  char *p = realloc(call->buf, cap);
  if (p == NULL)
    return false;
  call->buf = p;
  call->cap = cap;
  return true;
}

static bool call_append(struct call *call, const char *bytes, size_t n)
{
  if (n > MAX_PACKET - call->len || !call_reserve(call, call->len + n))
    return false;
  if (n)
    memcpy(call->buf + call->len, bytes, n);
  call->len += n;
  return true;
}

static uint32_t submit_type(const struct udf_spec *spec)
{
  static const uint32_t types[3][3] = {
    [JOB_FOREGROUND] = { SUBMIT_JOB, SUBMIT_JOB_HIGH, SUBMIT_JOB_LOW },
    [JOB_BACKGROUND] = { SUBMIT_JOB_BG, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW_BG },
    [JOB_EPOCH] = { SUBMIT_JOB_EPOCH, SUBMIT_JOB_EPOCH, SUBMIT_JOB_EPOCH },
  };
  return types[spec->kind][spec->priority];
}

/* Connect c to s, the server of slot i, counted in the status as this thread's. */
static enum io slot_open(struct thread_state *st, unsigned i, struct conn *c,
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

/* Send job's submit request (of the kind and priority spec says) on c. */
static enum io send_submit(struct conn *c, const struct udf_spec *spec, const struct job *job,
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
static bool submit(struct call *call, const struct job *job)
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
    if (now_ms() < __atomic_load_n(&g_down_until[i], __ATOMIC_RELAXED)) {
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
          __atomic_store_n(&g_down_until[i], now_ms() + st->config.backoff_ms,
                           __ATOMIC_RELAXED);
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
      __atomic_store_n(&g_down_until[i], now_ms() + st->config.backoff_ms, __ATOMIC_RELAXED);
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

/*
 * Whether argument i is a literal written in the statement. mysqld gives xxx_init the value
 * of every constant argument, and NEW.col in a trigger, @var and a procedure's variables are
 * constants too: a bad value there must give NULL for that row, not fail the user's
 * statement. Both servers name an argument by its SQL text ('x', _utf8mb4'x', 12, -1.5e3,
 * NEW.col, @v), so a literal is told by its first characters.
 */
static bool is_literal(UDF_ARGS *args, unsigned i)
{
  const struct udf_args_layout *full = (const struct udf_args_layout *)args;
  const char *s = full->attributes ? full->attributes[i] : NULL;
  size_t n = s ? full->attribute_lengths[i] : 0;
  if (args->args[i] == NULL || n == 0)
    return false;
  size_t k = 0; /* past an introducer: _charset, N, X or B */
  if (s[0] == '_') {
    while (++k < n && (s[k] == '_' || (s[k] >= '0' && s[k] <= '9') ||
                       (s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z'))) {
    }
    while (k < n && s[k] == ' ')
      k++;
  } else if (n > 1 && strchr("NnXxBb", s[0]) != NULL && s[1] == '\'') {
    k = 1;
  }
  if (k < n && s[k] == '\'')
    return true;
  if (k > 0)
    return false;
  char text[64]; /* a number, the whole of it */
  if (n >= sizeof text)
    return false;
  memcpy(text, s, n);
  text[n] = '\0';
  char *end;
  strtod(text, &end);
  return end == text + n;
}

/* unix_time as mysqld gives a constant to xxx_init: true if it is 0..MAX_EPOCH. */
static bool const_epoch_ok(enum Item_result type, const char *value, unsigned long length)
{
  if (type == INT_RESULT) {
    long long v = *(const long long *)value;
    return v >= 0 && v <= MAX_EPOCH;
  }
  double v;
  if (type == REAL_RESULT) {
    v = *(const double *)value;
  } else { /* DECIMAL_RESULT: its digits, not NUL-terminated */
    char digits[80];
    snprintf(digits, sizeof digits, "%.*s", (int)(length < 79 ? length : 79), value);
    v = strtod(digits, NULL);
  }
  return v >= 0 && v < (double)MAX_EPOCH + 1;
}

/* xxx_init's check of argument i, a function name: false, and the message filled, if it is
 * not a string or is a literal that gearmand could not take. */
static bool function_arg_ok(const char *usage, UDF_ARGS *args, unsigned i, char *message)
{
  const char *problem;
  if (args->arg_type[i] != STRING_RESULT) {
    init_error(message, usage, "function must be a string");
    return false;
  }
  if (is_literal(args, i) && args->lengths[i] == 0) {
    init_error(message, usage, "function must not be empty");
    return false;
  }
  if (is_literal(args, i) &&
      (problem = name_problem(args->args[i], args->lengths[i], MAX_FUNCTION)) != NULL) {
    init_error(message, usage, "function %s", problem);
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

  struct call *call = calloc(1, sizeof *call);
  if (call == NULL) {
    init_error(message, spec->usage, "out of memory");
    return 1;
  }
  call->spec = spec;
  initid->ptr = (char *)call;
  initid->maybe_null = 1;
  initid->const_item = 0;
  initid->max_length = spec->kind == JOB_FOREGROUND ? FOREGROUND_MAX_LENGTH : MAX_HANDLE;
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
  if (job.workload_len > MAX_PACKET - 2 * (MAX_FUNCTION + MAX_UNIQUE)) {
    UDF_LOG(&g_misc_log, "%s: workload over 1 GiB; job not submitted", spec->usage);
    return NULL;
  }
  if (!submit(call, &job))
    return NULL;
  *is_null = 0;
  *length = call->len;
  return call->buf;
}

/* Each entry point declared from the list, so that a definition that strays from the type
 * mysqld calls it through does not compile. */
#define DECLARE_STRING_UDF(name)                                                            \
  UDF_EXPORT udf_bool name##_init(UDF_INIT *initid, UDF_ARGS *args, char *message);         \
  UDF_EXPORT void name##_deinit(UDF_INIT *initid);                                          \
  UDF_EXPORT char *name(UDF_INIT *initid, UDF_ARGS *args, char *result,                     \
                        unsigned long *length, udf_flag *is_null, udf_flag *error);
#define DECLARE_AGGREGATE_UDF(name)                                                         \
  UDF_EXPORT udf_bool name##_init(UDF_INIT *initid, UDF_ARGS *args, char *message);         \
  UDF_EXPORT void name##_deinit(UDF_INIT *initid);                                          \
  UDF_EXPORT void name##_clear(UDF_INIT *initid, udf_flag *is_null, udf_flag *error);       \
  UDF_EXPORT void name##_add(UDF_INIT *initid, UDF_ARGS *args, udf_flag *is_null,           \
                             udf_flag *error);                                              \
  UDF_EXPORT long long name(UDF_INIT *initid, UDF_ARGS *args, udf_flag *is_null,            \
                            udf_flag *error);
GMU_FUNCTIONS(DECLARE_STRING_UDF, DECLARE_AGGREGATE_UDF)

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

/* ---------------------------------------------------------------- gman_sum */

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
    __atomic_store_n(&g_down_until[slot], now_ms() + g->config.backoff_ms, __ATOMIC_RELAXED);
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
      if (now_ms() < __atomic_load_n(&g_down_until[i], __ATOMIC_RELAXED)) {
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
    __atomic_store_n(&g_down_until[i], now_ms() + g->config.backoff_ms, __ATOMIC_RELAXED);
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
  if (job.workload_len > MAX_PACKET - 2 * (MAX_FUNCTION + MAX_UNIQUE)) {
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

/* ---------------------------------------------------------------- gman_servers_set */

static const struct udf_spec servers_set_spec = {
  "gman_servers_set(servers [, function])", JOB_BACKGROUND, PRIORITY_NORMAL, false
};

UDF_EXPORT udf_bool gman_servers_set_init(UDF_INIT *initid, UDF_ARGS *args, char *message)
{
  const char *usage = servers_set_spec.usage;
  if (args->arg_count < 1 || args->arg_count > 2) {
    init_error(message, usage, "expected 1 or 2 arguments, got %u", args->arg_count);
    return 1;
  }
  if (args->arg_type[0] != STRING_RESULT) {
    init_error(message, usage, "servers must be a string like 'host:port,host:port'");
    return 1;
  }
  if (args->arg_count == 2 && !function_arg_ok(usage, args, 1, message))
    return 1;
  config_refresh();
  pthread_mutex_lock(&g_config_lock);
  bool allowed = g_config.allow_servers_set;
  pthread_mutex_unlock(&g_config_lock);
  if (!allowed) {
    /* The file's name must fit the 80 bytes shown: keep its end, which names it best. */
    static const char prefix[] = "refused unless allow_servers_set=1 in ";
    const char *path = config_path();
    size_t room = MESSAGE_SHOWN - (sizeof prefix - 1);
    size_t len = strlen(path);
    if (len > room)
      init_error(message, usage, "%s...%s", prefix, path + len - (room - 3));
    else
      init_error(message, usage, "%s%s", prefix, path);
    return 1;
  }
  struct server parsed[MAX_SERVERS];
  unsigned n;
  char why[160];
  if (args->args[0] != NULL &&
      !parse_servers(args->args[0], args->lengths[0], parsed, &n, why, sizeof why)) {
    init_error(message, usage, "%s", why);
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

/*
 * Without a function: the default list. With one: that function's own list, as a
 * servers.FUNCTION= line would. Either lasts until the file changes to disallow it; a set
 * that does not fit beside the file's lists (more than MAX_SLOTS servers, MAX_ROUTES
 * functions) is ignored with a log line.
 */
UDF_EXPORT char *gman_servers_set(UDF_INIT *initid, UDF_ARGS *args, char *result,
                                  unsigned long *length, udf_flag *is_null, udf_flag *error)
{
  struct call *call = (struct call *)initid->ptr;
  struct server parsed[MAX_SERVERS];
  unsigned n;
  char why[160] = "out of memory", echo[41];
  const char *function = args->arg_count == 2 ? args->args[1] : NULL;
  size_t function_len = function != NULL ? args->lengths[1] : 0;
  (void)result;
  (void)error;
  *is_null = 1;
  if (args->arg_count == 2 && (function == NULL || function_len == 0 ||
                               name_problem(function, function_len, MAX_FUNCTION) != NULL)) {
    UDF_LOG(&g_misc_log, "gman_servers_set: function '%s' %s; ignored",
            function ? shown(function, function_len, echo) : "NULL",
            function == NULL || function_len == 0
                ? "is empty"
                : name_problem(function, function_len, MAX_FUNCTION));
    return NULL;
  }
  if (args->args[0] == NULL ||
      !parse_servers(args->args[0], args->lengths[0], parsed, &n, why, sizeof why)) {
    UDF_LOG(&g_misc_log, "gman_servers_set: %s; ignored", args->args[0] ? why : "NULL");
    return NULL;
  }
  /* Tried on copies: what does not fit changes nothing. On the heap: two configs are more
   * than a mysqld thread's stack should carry. */
  struct config *ov = malloc(2 * sizeof *ov), *next = ov + 1;
  pthread_mutex_lock(&g_config_lock);
  bool allowed = g_config.allow_servers_set, ok = false;
  if (allowed && ov != NULL) {
    *ov = g_overrides;
    *next = g_file_config;
    ok = config_set_servers(ov, function, function_len, parsed, n, why, sizeof why) &&
         config_apply_overrides(next, ov, why, sizeof why);
    if (ok) {
      g_overrides = *ov;
      config_publish();
    }
  }
  pthread_mutex_unlock(&g_config_lock);
  free(ov);
  if (allowed && !ok)
    UDF_LOG(&g_misc_log, "gman_servers_set: %s; ignored", why);
  call->len = 0;
  if (!ok || !call_append(call, args->args[0], args->lengths[0]))
    return NULL;
  *length = call->len;
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

/* Append list as a JSON array of "host:port" strings. */
static size_t json_list(char *buf, size_t cap, size_t len, const struct config *c,
                        const struct server_list *list)
{
  APPEND("[");
  for (unsigned k = 0; k < list->n; k++) {
    const struct server *s = &c->slots[list->slot[k]];
    char one[MAX_HOST + 16];
    snprintf(one, sizeof one, strchr(s->host, ':') ? "[%s]:%u" : "%s:%u", s->host, s->port);
    if (k)
      APPEND(",");
    len = json_str(buf, cap, len, one);
  }
  APPEND("]");
  return len;
}

static size_t status_json(char *buf, size_t cap)
{
  size_t len = 0;
  /* Read in place, under the lock: a copy of the configuration is large for a stack. */
  pthread_mutex_lock(&g_config_lock);
  const struct config *c = &g_config;
  APPEND("{\"version\":\"%s\",\"config\":", GMU_VERSION);
  len = json_str(buf, cap, len, config_path());
  APPEND(",\"config_error\":");
  if (c->error[0])
    len = json_str(buf, cap, len, c->error);
  else
    APPEND("null");
  APPEND(",\"servers\":");
  len = json_list(buf, cap, len, c, &c->servers);
  APPEND(",\"routes\":{");
  for (unsigned r = 0; r < c->nroutes; r++) {
    if (r)
      APPEND(",");
    len = json_str(buf, cap, len, c->names + c->routes[r].name_at);
    APPEND(":");
    len = json_list(buf, cap, len, c, &c->routes[r].list);
  }
  APPEND("},\"timeout_ms\":%d,\"backoff_ms\":%d,\"allow_servers_set\":%s,"
         "\"config_generation\":%llu,\"counters\":{", c->timeout_ms, c->backoff_ms,
         c->allow_servers_set ? "true" : "false",
         (unsigned long long)__atomic_load_n(&g_generation, __ATOMIC_RELAXED));
  pthread_mutex_unlock(&g_config_lock);
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
