/*
 * gearman_udf.h: what the files of the library share: the list of its SQL functions, the
 * server's UDF types, the limits, logging and counters. The contract and every decision:
 * udf/README.md.
 */
#ifndef GEARMAN_UDF_H
#define GEARMAN_UDF_H

#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
  STRING(gman_token)                                                                        \
  STRING(gman_ship_ledger)                                                                  \
  STRING(gman_do)                                                                           \
  STRING(gman_do_high)                                                                      \
  STRING(gman_do_low)                                                                       \
  AGGREGATE(gman_sum)                                                                       \
  STRING(gman_servers_set)                                                                  \
  STRING(gman_udf_status)

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

/* gman_udf_status()'s "version" (GMU_VERSION in gearman_udf.c). */
extern const char gmu_version[];

/* gearmand's limits, each a buffer that also holds a NUL (GEARMAN_MAX_UNIQUE_SIZE 64,
 * GEARMAN_FUNCTION_MAX_SIZE 512, GEARMAN_JOB_HANDLE_SIZE 64). */
#define MAX_UNIQUE 63
#define MAX_FUNCTION 511
#define MAX_HANDLE 63
/* No packet or result is longer than the largest max_allowed_packet, 1 GiB: mysqld could
 * not return it, and a worker that streams WORK_DATA must not fill our memory. */
#define MAX_PACKET (1u << 30)
/* A workload must leave room in a packet for the function name and the unique. */
#define MAX_WORKLOAD (MAX_PACKET - 2 * (MAX_FUNCTION + MAX_UNIQUE))
/* unix_time above 2106-02-07 is a mistake (milliseconds?) that would sit in gearmand's
 * queue for ever. */
#define MAX_EPOCH 4294967295LL
#define FOREGROUND_MAX_LENGTH 16777215 /* MEDIUMBLOB: a worker result may be large */
#define LOG_EVERY_MS 10000 /* at most one log line per source every ten seconds */

/* ---------------------------------------------------------------- logging (log.c) */

struct rate_limit {
  int64_t last_ms;     /* atomic: when the last line was written */
  uint64_t suppressed; /* atomic: lines dropped since */
};

/* Milliseconds on the monotonic clock: every deadline and back-off is read from it. */
int64_t now_ms(void);

__attribute__((format(printf, 2, 3)))
void log_line(struct rate_limit *rl, const char *fmt, ...);

/* The one logging macro: rl is a struct rate_limit *, or NULL for a line never suppressed. */
#define UDF_LOG(rl, ...) log_line((rl), __VA_ARGS__)

/* Rate limits of log lines about a job or a row, and about anything else (atomic fields:
 * no lock). Each server slot has its own, in submit.c. */
extern struct rate_limit g_job_log;
extern struct rate_limit g_misc_log;

/* Up to 40 bytes of s for a message, each control byte shown as '?'; out has 41 bytes. */
const char *shown(const char *s, size_t n, char *out);

/* ---------------------------------------------------------------- counters (log.c) */

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
  C_SHIP_SENDS, /* send() calls that carried gman_ship requests (ship.c): batching shows */
  C_COUNT
};

void count_n(enum counter c, uint64_t n);
void count(enum counter c);
/* gman_udf_status()'s "counters": each name with its value. */
const char *counter_name(enum counter c);
uint64_t counter_value(enum counter c);

/* ---------------------------------------------------------------- uniques (gearman_udf.c) */

/* "<prefix>-<counter>", both 16 hex digits, for jobs the caller gave no unique. */
#define GENERATED_UNIQUE_LEN 33
_Static_assert(GENERATED_UNIQUE_LEN <= MAX_UNIQUE, "a generated unique must fit");

/* Writes a fresh unique and its NUL into out (GENERATED_UNIQUE_LEN + 1 bytes). */
void unique_generate(char *out);

#endif
