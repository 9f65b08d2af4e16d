/*
 * status.c: gman_udf_status(), the configuration and the counters as JSON.
 */
#include "args.h"
#include "config_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* gman_udf_status() at its largest: every list full of the longest names, every byte of a
 * route's name escaped, and room for the rest. */
#define STATUS_BUF ((MAX_ROUTES + 1) * MAX_SERVERS * (MAX_HOST + 12) + 6 * ROUTE_NAMES_SIZE + \
                    4096)

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
  uint64_t generation;
  const struct config *c = config_state_lock(&generation);
  APPEND("{\"version\":\"%s\",\"config\":", gmu_version);
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
  APPEND("},\"timeout_ms\":%d,\"result_timeout_ms\":%d,\"backoff_ms\":%d,"
         "\"allow_servers_set\":%s,\"config_generation\":%llu,\"counters\":{",
         c->timeout_ms, c->result_timeout_ms, c->backoff_ms,
         c->allow_servers_set ? "true" : "false", (unsigned long long)generation);
  config_state_unlock();
  for (int i = 0; i < C_COUNT; i++)
    APPEND("%s\"%s\":%llu", i ? "," : "", counter_name((enum counter)i),
           (unsigned long long)counter_value((enum counter)i));
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

CALL_DEINIT(gman_udf_status)

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
