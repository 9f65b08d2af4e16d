/*
 * config.c: the configuration file parsed, as pure functions of their arguments: a line at
 * a time (config_line), the whole file (config_load), a server list, a duration. What the
 * file may say and how it fails closed: udf/README.md.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Keep the first problem found, cut to fit. */
__attribute__((format(printf, 2, 3)))
void config_error(struct config *c, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->error, sizeof c->error, fmt, ap);
  va_end(ap);
}

void config_defaults(struct config *c)
{
  memset(c, 0, sizeof *c);
  snprintf(c->slots[0].host, MAX_HOST, "%s", DEFAULT_HOST);
  c->slots[0].port = DEFAULT_PORT;
  c->nslots = 1;
  c->servers.n = 1;
  c->timeout_ms = DEFAULT_TIMEOUT_MS;
  c->result_timeout_ms = DEFAULT_RESULT_TIMEOUT_MS;
  c->backoff_ms = DEFAULT_BACKOFF_MS;
}

/* Fail closed: no server in any list. */
void config_no_servers(struct config *c)
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
const char *name_problem(const char *p, size_t n, size_t max)
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
const struct server_list *config_servers_for(const struct config *c, const char *function,
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
bool config_set_servers(struct config *c, const char *function, size_t len,
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
bool parse_server(const char *s, size_t n, struct server *out, char *why, size_t size)
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
bool parse_servers(const char *s, size_t n, struct server *out, unsigned *count_out,
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

bool parse_ms(const char *s, int *out)
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

int config_result_wait_ms(const struct config *c)
{
  return c->result_timeout_ms > c->timeout_ms ? c->result_timeout_ms : c->timeout_ms;
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

static const char *const config_keys[K_COUNT] = {
  "servers", "timeout_ms", "result_timeout_ms", "backoff_ms", "allow_servers_set",
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
bool config_line(char *line, size_t n, struct config *c, bool given[K_COUNT],
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
             "result_timeout_ms, backoff_ms, allow_servers_set)", shown(key, strlen(key), echo));
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
  case K_RESULT_TIMEOUT_MS:
  case K_BACKOFF_MS:
    if (parse_ms(value, k == K_TIMEOUT_MS          ? &c->timeout_ms
                        : k == K_RESULT_TIMEOUT_MS ? &c->result_timeout_ms
                                                   : &c->backoff_ms))
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

/* Read the file at path into c. Any problem fails closed: no servers, no gman_servers_set,
 * each problem logged and the first kept in c->error. */
void config_load(const char *path, struct config *c)
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
bool config_apply_overrides(struct config *c, const struct config *ov, char *why, size_t size)
{
  if (ov->servers.n > 0 && !config_copy_list(c, NULL, 0, ov, &ov->servers, why, size))
    return false;
  for (unsigned r = 0; r < ov->nroutes; r++)
    if (!config_copy_list(c, ov->names + ov->routes[r].name_at, ov->routes[r].name_len, ov,
                          &ov->routes[r].list, why, size))
      return false;
  return true;
}
