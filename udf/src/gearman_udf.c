/*
 * gearman_udf.c: submit Gearman jobs from MySQL/MariaDB (replaces gearman-mysql-udf 0.6).
 * The library as a whole: its version, and what happens when mysqld loads and unloads it.
 * What each function does, the contract and every decision: udf/README.md. The files:
 *
 *   gearman_udf.h   the list of SQL functions (GMU_FUNCTIONS), limits, logging, counters
 *   log.c           rate-limited lines to mysqld's error log; the counters
 *   config.c/.h     the config file parsed, as pure functions (../test_config.c tests them)
 *   config_state.c  the configuration all threads share; its generation; back-offs
 *   conn.c          per-thread connections and socket I/O within a deadline
 *   ship.c          gman_ship's requests gathered per connection; the flusher thread
 *   protocol.c      Gearman's packets: one table of every type, parsed and encoded from it
 *   submit.c        submit_route(): the one path of fail-over, back-off and resend
 *   args.c          per-statement state and xxx_init's argument checks
 *   job_udfs.c      gman_do*, gman_ship, gman_ship_ledger
 *   token.c         gman_token: the random tokens of the host's ledger rows
 *   sum.c           gman_sum: the group and its jobs' submission
 *   sum_answers.c   gman_sum: the answers read and summed
 *   servers_set.c   gman_servers_set
 *   status.c        gman_udf_status
 */
#include "ship.h"

#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define GMU_VERSION "1.3.0"

const char gmu_version[] = GMU_VERSION;

/*
 * Uniques for jobs the caller gave none: "<prefix>-<counter>", both 16 hex digits. The
 * prefix is random per load, so two servers (or two loads) never share one; the counter is
 * atomic. Both are written once here, before any UDF can run, or atomically.
 */
static uint64_t g_unique_prefix;
static uint64_t g_unique_counter;

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

void unique_generate(char *out)
{
  uint64_t n = __atomic_add_fetch(&g_unique_counter, 1, __ATOMIC_RELAXED);
  snprintf(out, GENERATED_UNIQUE_LEN + 1, "%016llx-%016llx",
           (unsigned long long)g_unique_prefix, (unsigned long long)n);
}

__attribute__((constructor))
static void library_load(void)
{
  unique_prefix_init();
  threads_start();
}

__attribute__((destructor))
static void library_unload(void)
{
  ship_stop(); /* the flusher ends before the states it reads are freed */
  threads_stop();
}
