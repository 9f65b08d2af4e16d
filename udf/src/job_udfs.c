/*
 * job_udfs.c: gman_do_background, gman_do_high_background, gman_do_low_background,
 * gman_do_epoch_background, gman_ship, gman_do, gman_do_high and gman_do_low: one job per
 * row, each through the same init, row function and submit().
 */
#include "submit.h"

#include <stdlib.h>

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
  if (job.workload_len > MAX_WORKLOAD) {
    UDF_LOG(&g_misc_log, "%s: workload over 1 GiB; job not submitted", spec->usage);
    return NULL;
  }
  if (!submit(call, &job))
    return NULL;
  *is_null = 0;
  *length = call->len;
  return call->buf;
}

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

