/*
 * log.c: one line to mysqld's error log per event, rate-limited per source; the counters
 * gman_udf_status() shows.
 */
#include "gearman_udf.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

struct rate_limit g_job_log;
struct rate_limit g_misc_log;

int64_t now_ms(void)
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
void log_line(struct rate_limit *rl, const char *fmt, ...)
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

const char *shown(const char *s, size_t n, char *out)
{
  size_t i;
  for (i = 0; i < n && i < 40; i++)
    out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  out[i] = '\0';
  return out;
}

/* ---------------------------------------------------------------- counters */

static const char *const counter_names[C_COUNT] = {
  "submitted", "failed", "timed_out", "resubmitted", "connections_opened", "reconnects",
  "skipped_backoff", "ship_refused", "ship_unacknowledged", "ship_sends",
};

/* Process-wide statistics; only ever touched with atomic adds and loads. */
static uint64_t g_counters[C_COUNT];

void count_n(enum counter c, uint64_t n)
{
  __atomic_fetch_add(&g_counters[c], n, __ATOMIC_RELAXED);
}

void count(enum counter c)
{
  count_n(c, 1);
}

const char *counter_name(enum counter c)
{
  return counter_names[c];
}

uint64_t counter_value(enum counter c)
{
  return __atomic_load_n(&g_counters[c], __ATOMIC_RELAXED);
}
