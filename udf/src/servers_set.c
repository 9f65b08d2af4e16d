/*
 * servers_set.c: gman_servers_set(servers [, function]), which lays a server list over the
 * file's when the file allows it.
 */
#include "args.h"
#include "config_state.h"

#include <stdlib.h>
#include <string.h>

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
  bool allowed = config_allows_servers_set();
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

CALL_DEINIT(gman_servers_set)

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
  bool allowed;
  bool ok = config_override_servers(function, function_len, parsed, n, &allowed, why, sizeof why);
  if (allowed && !ok)
    UDF_LOG(&g_misc_log, "gman_servers_set: %s; ignored", why);
  call->len = 0;
  if (!ok || !call_append(call, args->args[0], args->lengths[0]))
    return NULL;
  *length = call->len;
  *is_null = 0;
  return call->buf;
}

