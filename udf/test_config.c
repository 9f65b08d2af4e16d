/*
 * test_config.c: unit tests of the config parser (src/config.c), which is pure: no mysqld,
 * no gearmand. Run by `make -C udf test` under valgrind; prints one "ok"/"not ok" line per
 * check and a last line "test_config: N passed, M failed".
 */
#include "src/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int passed, failed;

static void check(bool ok, const char *what)
{
  if (ok)
    passed++;
  else
    failed++;
  printf("%s %d - %s\n", ok ? "ok" : "not ok", passed + failed, what);
}

static bool server_is(const char *text, const char *host, unsigned port)
{
  struct server s;
  char why[160];
  return parse_server(text, strlen(text), &s, why, sizeof why) && strcmp(s.host, host) == 0 &&
         s.port == port;
}

static bool server_refused(const char *text, const char *reason)
{
  struct server s;
  char why[160] = "";
  return !parse_server(text, strlen(text), &s, why, sizeof why) && strstr(why, reason) != NULL;
}

/* The config that lines (each NUL-terminated, the list ended by NULL) make; why of the
 * first refused line in why. */
static bool apply(struct config *c, char *why, const char *const *lines)
{
  bool given[K_COUNT] = { false };
  config_defaults(c);
  for (; *lines; lines++) {
    char line[512];
    snprintf(line, sizeof line, "%s", *lines);
    if (!config_line(line, strlen(line), c, given, why, 160))
      return false;
  }
  return true;
}

static void test_servers(void)
{
  check(server_is("gearman", "gearman", 4730), "a host without a port gets 4730");
  check(server_is("10.0.0.5:4731", "10.0.0.5", 4731), "host:port");
  check(server_is("[::1]:4732", "::1", 4732), "[v6]:port");
  check(server_is("[::1]", "::1", 4730), "[v6] gets 4730");
  check(server_refused("h:0", "is not host:port"), "port 0 is refused");
  check(server_refused("h:65536", "is not host:port"), "port 65536 is refused");
  check(server_refused("h:", "is not host:port"), "an empty port is refused");
  check(server_refused("h st", "whitespace or a control character"), "whitespace is refused");
  check(server_refused("h/x", "is not host:port"), "a slash is refused");

  struct server list[MAX_SERVERS];
  unsigned n = 0;
  char why[160] = "";
  const char *two = "a:1 , b:2";
  check(parse_servers(two, strlen(two), list, &n, why, sizeof why) && n == 2 &&
        list[1].port == 2, "a list with spaces around its comma");
  const char *empty = "a:1,,b";
  check(!parse_servers(empty, strlen(empty), list, &n, why, sizeof why) &&
        strstr(why, "server 2 is empty"), "an empty server in a list is refused");
  char many[256] = "h";
  for (int k = 0; k < MAX_SERVERS; k++)
    strcat(many, ",h");
  check(!parse_servers(many, strlen(many), list, &n, why, sizeof why) &&
        strstr(why, "more than 16 servers"), "17 servers are refused");
}

static void test_ms(void)
{
  int v = 0;
  check(parse_ms("250", &v) && v == 250, "milliseconds");
  check(!parse_ms("0", &v), "0 ms is refused");
  check(!parse_ms("600001", &v), "over ten minutes is refused");
  check(!parse_ms("1s", &v), "a unit is refused");
  check(!parse_ms("", &v), "nothing is refused");
}

static void test_lines(void)
{
  struct config *c = malloc(sizeof *c);
  char why[160] = "";
  check(apply(c, why, (const char *const[]){ "servers=a:1,b:2  # two", "timeout_ms=50",
                                             "result_timeout_ms=60", "backoff_ms = 70",
                                             "allow_servers_set=yes",
                                             "servers.resize=b:2,c:3", NULL }) &&
        c->servers.n == 2 && c->nslots == 3 && c->timeout_ms == 50 &&
        c->result_timeout_ms == 60 && c->backoff_ms == 70 && c->allow_servers_set &&
        c->nroutes == 1,
        "every key, a comment, a route sharing a server with the default list");
  const struct server_list *r = config_servers_for(c, "resize", 6);
  check(r->n == 2 && strcmp(c->slots[r->slot[0]].host, "b") == 0, "a route's own servers");
  check(config_servers_for(c, "other", 5) == &c->servers, "other functions: servers=");
  check(!apply(c, why, (const char *const[]){ "timeout_ms=1", "timeout_ms=2", NULL }) &&
        strstr(why, "timeout_ms given twice"), "a key given twice is refused");
  check(!apply(c, why, (const char *const[]){ "colour=blue", NULL }) &&
        strstr(why, "unknown key 'colour'"), "an unknown key is refused");
  check(!apply(c, why, (const char *const[]){ "servers", NULL }) &&
        strstr(why, "expected key=value"), "a line without = is refused");
  check(!apply(c, why, (const char *const[]){ "servers.=a", NULL }) &&
        strstr(why, "the function name is empty"), "an empty route name is refused");
  check(!apply(c, why, (const char *const[]){ "allow_servers_set=maybe", NULL }) &&
        strstr(why, "expected 0 or 1"), "a flag that is no flag is refused");
  free(c);
}

/* The two deadlines: timeout_ms to submit, result_timeout_ms for a foreground call. */
static void test_deadlines(void)
{
  struct config *c = malloc(sizeof *c);
  char why[160] = "";
  check(apply(c, why, (const char *const[]){ NULL }) && c->timeout_ms == 1000 &&
        c->result_timeout_ms == 30000 && config_result_wait_ms(c) == 30000,
        "defaults: timeout_ms=1000 to submit, result_timeout_ms=30000 for results");
  check(apply(c, why, (const char *const[]){ "result_timeout_ms = 45000  # long jobs", NULL }) &&
        c->result_timeout_ms == 45000 && c->timeout_ms == 1000,
        "result_timeout_ms is read, and leaves timeout_ms alone");
  check(apply(c, why, (const char *const[]){ "timeout_ms=200", NULL }) &&
        c->timeout_ms == 200 && c->result_timeout_ms == 30000,
        "timeout_ms alone leaves result_timeout_ms at its default");
  check(apply(c, why, (const char *const[]){ "timeout_ms=60000", NULL }) &&
        config_result_wait_ms(c) == 60000,
        "a result is waited for at least timeout_ms (a file from before result_timeout_ms)");
  check(apply(c, why, (const char *const[]){ "timeout_ms=500", "result_timeout_ms=300", NULL }) &&
        c->result_timeout_ms == 300 && config_result_wait_ms(c) == 500,
        "result_timeout_ms below timeout_ms counts as timeout_ms");
  check(!apply(c, why, (const char *const[]){ "result_timeout_ms=30s", NULL }) &&
        strcmp(why, "result_timeout_ms: expected milliseconds 1..600000, got '30s'") == 0,
        "a result_timeout_ms with a unit is refused, naming the key");
  check(!apply(c, why, (const char *const[]){ "result_timeout_ms=0", NULL }) &&
        strstr(why, "result_timeout_ms: expected milliseconds"), "result_timeout_ms=0 is refused");
  check(!apply(c, why, (const char *const[]){ "result_timeout_ms=600001", NULL }) &&
        strstr(why, "result_timeout_ms: expected milliseconds"),
        "result_timeout_ms over ten minutes is refused");
  check(!apply(c, why, (const char *const[]){ "result_timeout_ms=1", "result_timeout_ms=2",
                                              NULL }) &&
        strstr(why, "result_timeout_ms given twice"), "result_timeout_ms given twice is refused");
  check(!apply(c, why, (const char *const[]){ "result_timeout=5000", NULL }) &&
        strstr(why, "unknown key 'result_timeout'") &&
        strstr(why, " timeout_ms, result_timeout_ms, backoff_ms,"),
        "an unknown key is refused, and the known ones listed name result_timeout_ms");
  free(c);
}

static void test_load(const char *dir)
{
  struct config *c = malloc(sizeof *c);
  char path[512];
  snprintf(path, sizeof path, "%s/gearman_udf_test_config.%d", dir, (int)getpid());
  FILE *f = fopen(path, "w");
  fputs("servers=g1:4730\ntimeout_ms=200\nresult_timeout_ms=5000\n", f);
  fclose(f);
  config_load(path, c);
  check(c->error[0] == '\0' && c->servers.n == 1 && c->timeout_ms == 200 &&
        c->result_timeout_ms == 5000, "a file is loaded");
  f = fopen(path, "w");
  fputs("servers=g1:4730\nresult_timeout_ms=soon\n", f);
  fclose(f);
  config_load(path, c);
  check(strstr(c->error, ":2: result_timeout_ms: expected milliseconds") &&
        c->servers.n == 0, "a bad result_timeout_ms fails closed and names its line");
  f = fopen(path, "w");
  fputs("# nothing but a comment\n", f);
  fclose(f);
  config_load(path, c);
  check(strstr(c->error, "no settings") && c->servers.n == 0 && !c->allow_servers_set,
        "a file without settings fails closed");
  f = fopen(path, "w");
  fputs("allow_servers_set=1\nservers=a:1\nbackoff_ms=-1\n", f);
  fclose(f);
  config_load(path, c);
  check(strstr(c->error, ":3: backoff_ms") && c->servers.n == 0 && !c->allow_servers_set,
        "a bad line fails closed and names its line");
  unlink(path);
  config_load(path, c);
  check(strstr(c->error, "cannot open") && c->servers.n == 0, "an unreadable file fails closed");
  free(c);
}

int main(int argc, char **argv)
{
  test_servers();
  test_ms();
  test_lines();
  test_deadlines();
  test_load(argc > 1 ? argv[1] : "/tmp");
  printf("test_config: %d passed, %d failed\n", passed, failed);
  return failed != 0;
}
