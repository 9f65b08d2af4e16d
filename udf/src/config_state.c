/*
 * config_state.c: the configuration every mysqld thread shares: read from the file when it
 * changes, with what gman_servers_set() laid over it, and the servers backed off.
 */
#include "config_state.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/*
 * g_config_lock guards g_file_config (what the file says), g_overrides (what
 * gman_servers_set() set: a default list if servers.n > 0, and routes), g_config (the two
 * together, what threads copy) and the g_config_* bookkeeping.
 * g_generation is written under it and read atomically without it: a thread whose
 * snapshot has an older generation drops its connections and copies g_config again.
 * g_down_until[i] (atomic, ms on the monotonic clock) is shared by all threads: until
 * then, slot i of the current generation is skipped.
 */
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

const char *config_path(void)
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
void config_refresh(void)
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

void config_snapshot(struct config *out, uint64_t *generation)
{
  pthread_mutex_lock(&g_config_lock);
  *out = g_config;
  *generation = __atomic_load_n(&g_generation, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&g_config_lock);
}

uint64_t config_generation(void)
{
  return __atomic_load_n(&g_generation, __ATOMIC_ACQUIRE);
}

const struct config *config_state_lock(uint64_t *generation)
{
  pthread_mutex_lock(&g_config_lock);
  *generation = __atomic_load_n(&g_generation, __ATOMIC_RELAXED);
  return &g_config;
}

void config_state_unlock(void)
{
  pthread_mutex_unlock(&g_config_lock);
}

bool config_allows_servers_set(void)
{
  pthread_mutex_lock(&g_config_lock);
  bool allowed = g_config.allow_servers_set;
  pthread_mutex_unlock(&g_config_lock);
  return allowed;
}

bool config_override_servers(const char *function, size_t len, const struct server *servers,
                             unsigned n, bool *allowed, char *why, size_t size)
{
  /* Tried on copies: what does not fit changes nothing. On the heap: two configs are more
   * than a mysqld thread's stack should carry. */
  struct config *ov = malloc(2 * sizeof *ov), *next = ov + 1;
  bool ok = false;
  snprintf(why, size, "out of memory");
  pthread_mutex_lock(&g_config_lock);
  *allowed = g_config.allow_servers_set;
  if (*allowed && ov != NULL) {
    *ov = g_overrides;
    *next = g_file_config;
    ok = config_set_servers(ov, function, len, servers, n, why, size) &&
         config_apply_overrides(next, ov, why, size);
    if (ok) {
      g_overrides = *ov;
      config_publish();
    }
  }
  pthread_mutex_unlock(&g_config_lock);
  free(ov);
  return ok;
}

bool server_backed_off(unsigned i)
{
  return now_ms() < __atomic_load_n(&g_down_until[i], __ATOMIC_RELAXED);
}

void server_back_off(unsigned i, int backoff_ms)
{
  __atomic_store_n(&g_down_until[i], now_ms() + backoff_ms, __ATOMIC_RELAXED);
}
