/*
 * config.h: the UDF's configuration as a value, and the pure functions that parse it
 * (config.c): no lock, no global, so that test_config.c tests them without a mysqld.
 * The configuration every thread shares is config_state.c's.
 */
#ifndef GMU_CONFIG_H
#define GMU_CONFIG_H

#include "gearman_udf.h"

#include <netinet/in.h>

#define CONFIG_ENV "GEARMAN_UDF_CONFIG"
#define CONFIG_DEFAULT_PATH "/etc/mysql/gearman_udf.conf"
#define DEFAULT_HOST "127.0.0.1"
#define DEFAULT_PORT 4730
/* Connecting and submitting, up to gearmand's acknowledgement: short, because a trigger's
 * INSERT waits for it. */
#define DEFAULT_TIMEOUT_MS 1000
/* A foreground call (gman_do*) or a gman_sum group as a whole, its wait for results
 * included: long enough for a group of hundreds of short jobs (100 jobs of 50 ms on 8
 * workers take about a second), and below innodb_lock_wait_timeout's 50 s, so that a
 * statement stuck on a lost worker releases its row locks before a transaction waiting
 * for them gives up. */
#define DEFAULT_RESULT_TIMEOUT_MS 30000
#define DEFAULT_BACKOFF_MS 1000
#define MAX_DURATION_MS 600000   /* ten minutes: anything longer is a typo */
#define CONFIG_ERROR_SIZE 256     /* the first problem of a refused file, as status shows it */
#define MAX_SERVERS 16      /* in one list: the default one, or one function's */
#define MAX_SLOTS 32        /* distinct servers in all lists together */
#define MAX_ROUTES 32       /* functions with servers of their own (servers.FUNCTION=) */
#define ROUTE_NAMES_SIZE 4096 /* their names, each with its NUL, all together */
#define ROUTE_PREFIX "servers."
#define MAX_HOST 256

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
 * back-offs and per-server log limits are indexed by slot.
 */
struct config {
  struct server slots[MAX_SLOTS];
  unsigned nslots;
  struct server_list servers;       /* the default list: servers= */
  struct route routes[MAX_ROUTES];  /* servers.FUNCTION= */
  unsigned nroutes;
  char names[ROUTE_NAMES_SIZE];
  unsigned names_len;
  int timeout_ms;        /* connect and submit, until gearmand acknowledges the job */
  int result_timeout_ms; /* a foreground call or a gman_sum group as a whole */
  int backoff_ms;
  bool allow_servers_set;
  char error[CONFIG_ERROR_SIZE]; /* why the file was refused; empty when it was taken */
};

/* What config_defaults() makes, as an initializer. */
#define CONFIG_DEFAULTS                                                                    \
  {                                                                                        \
    .slots = { { DEFAULT_HOST, DEFAULT_PORT } }, .nslots = 1, .servers = { { 0 }, 1 },     \
    .timeout_ms = DEFAULT_TIMEOUT_MS, .result_timeout_ms = DEFAULT_RESULT_TIMEOUT_MS,      \
    .backoff_ms = DEFAULT_BACKOFF_MS,                                                      \
  }

/* The keys of the file, but servers.FUNCTION. */
enum config_key {
  K_SERVERS, K_TIMEOUT_MS, K_RESULT_TIMEOUT_MS, K_BACKOFF_MS, K_ALLOW_SERVERS_SET, K_COUNT
};

/* Why the file is refused, in every log line that says so. */
#define CLOSED "no servers until the file is fixed: every job gives NULL"

__attribute__((format(printf, 2, 3)))
void config_error(struct config *c, const char *fmt, ...);
void config_defaults(struct config *c);
/* Fail closed: no server in any list. */
void config_no_servers(struct config *c);

/* What is wrong with a function name or unique of n bytes (max MAX_FUNCTION or
 * MAX_UNIQUE), or NULL if nothing. */
const char *name_problem(const char *p, size_t n, size_t max);

/* The servers for function (n bytes): its own, or else the default list. */
const struct server_list *config_servers_for(const struct config *c, const char *function,
                                            size_t n);
bool config_set_servers(struct config *c, const char *function, size_t len,
                        const struct server *servers, unsigned n, char *why, size_t size);
bool config_apply_overrides(struct config *c, const struct config *ov, char *why, size_t size);

bool parse_server(const char *s, size_t n, struct server *out, char *why, size_t size);
bool parse_servers(const char *s, size_t n, struct server *out, unsigned *count_out,
                   char *why, size_t size);
bool parse_ms(const char *s, int *out);
/* How long a foreground call or a gman_sum group may take in all: result_timeout_ms, but
 * never less than timeout_ms, so that a file that raised timeout_ms for long jobs (when it
 * bounded the wait for results too) still waits that long. */
int config_result_wait_ms(const struct config *c);
bool config_line(char *line, size_t n, struct config *c, bool given[K_COUNT], char *why,
                 size_t size);
void config_load(const char *path, struct config *c);

#endif
