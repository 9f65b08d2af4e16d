/*
 * config_state.h: the configuration every mysqld thread shares (config_state.c): the file
 * as last read, what gman_servers_set() laid over it, its generation, and which servers
 * are backed off.
 */
#ifndef GMU_CONFIG_STATE_H
#define GMU_CONFIG_STATE_H

#include "config.h"

#define CONFIG_CHECK_EVERY_MS 1000 /* at most one stat() of the config file a second */

/* The file's path: mysqld's GEARMAN_UDF_CONFIG, else CONFIG_DEFAULT_PATH. */
const char *config_path(void);

/* Re-read the config file if it changed; stats it at most once a second. */
void config_refresh(void);

/* The current generation: it grows with every change of the shared configuration. */
uint64_t config_generation(void);

/* A copy of the shared configuration and its generation. */
void config_snapshot(struct config *out, uint64_t *generation);

/* The shared configuration, read in place (it is large for a stack) until
 * config_state_unlock(); meanwhile, call no function that takes the lock. */
const struct config *config_state_lock(uint64_t *generation);
void config_state_unlock(void);

/* Whether the file allows gman_servers_set(). */
bool config_allows_servers_set(void);

/*
 * What gman_servers_set() does: servers[0..n) become function's list (len bytes; NULL for
 * the default list), laid over the file's. False, and why, if the file does not allow it
 * (*allowed false then) or the list does not fit beside the file's lists.
 */
bool config_override_servers(const char *function, size_t len, const struct server *servers,
                             unsigned n, bool *allowed, char *why, size_t size);

/* Whether slot i of the current generation is being skipped (backoff_ms after a failure). */
bool server_backed_off(unsigned i);
/* Skip slot i for backoff_ms, in every thread. */
void server_back_off(unsigned i, int backoff_ms);

#endif
