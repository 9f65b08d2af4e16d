/*
 * token.c: gman_token(), the random token of a ledger row of the host's immediate delivery.
 *
 * The token is what proves that a job came from the ledger: the worker runs a job only when
 * it carries its row's token, which no SQL account without SELECT on the ledger can read.
 * The trigger used to make it in SQL (HEX(RANDOM_BYTES(16)) in a local variable, shared by
 * the INSERT and the ship); a variable and RANDOM_BYTES cost each row about 15% of the
 * trigger. Here it comes from getrandom() (the kernel's CSPRNG), TOKEN_POOL bytes at a time,
 * and stays pending in the thread until gman_ship_ledger() puts it into the row's job.
 *
 * What any account can do with these functions gives it nothing: gman_token() returns a
 * fresh token that is no row's, and gman_ship_ledger() never returns the token it sends.
 * A statement runs on one thread from start to end, so a trigger's INSERT and its ship see
 * the same pending token; each ship takes it, so no later call can send it again.
 */
#include "token.h"

#include "args.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

/* n random bytes from the kernel; false if it gives none (no getrandom, no /dev/urandom). */
static bool random_fill(unsigned char *p, size_t n)
{
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(p + got, n - got, 0);
    if (r > 0) {
      got += (size_t)r;
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  if (got == n)
    return true;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  while (got < n) {
    ssize_t r = read(fd, p + got, n - got);
    if (r > 0)
      got += (size_t)r;
    else if (!(r < 0 && errno == EINTR))
      break;
  }
  close(fd);
  return got == n;
}

bool token_take(struct thread_state *st, char *out)
{
  if (!st->has_pending)
    return false;
  memcpy(out, st->pending, TOKEN_HEX + 1);
  st->has_pending = false;
  memset(st->pending, 0, sizeof st->pending);
  return true;
}

UDF_EXPORT udf_bool gman_token_init(UDF_INIT *initid, UDF_ARGS *args, char *message)
{
  if (args->arg_count != 0) {
    init_error(message, "gman_token()", "expected no arguments, got %u", args->arg_count);
    return 1;
  }
  initid->maybe_null = 1; /* no randomness to be had: NULL, never a weak token */
  initid->const_item = 0;
  initid->max_length = TOKEN_HEX;
  return 0;
}

UDF_EXPORT void gman_token_deinit(UDF_INIT *initid)
{
  (void)initid;
}

UDF_EXPORT char *gman_token(UDF_INIT *initid, UDF_ARGS *args, char *result,
                            unsigned long *length, udf_flag *is_null, udf_flag *error)
{
  static const char hex[] = "0123456789ABCDEF";
  (void)initid;
  (void)args;
  (void)error;
  *is_null = 1;
  struct thread_state *st = thread_state_get();
  if (st == NULL) {
    UDF_LOG(&g_misc_log, "out of memory");
    return NULL;
  }
  st->has_pending = false; /* a token from an earlier call is no longer this row's */
  if (st->random_left < TOKEN_BYTES) {
    if (!random_fill(st->random, sizeof st->random)) {
      UDF_LOG(&g_misc_log, "gman_token(): the kernel gave no random bytes (getrandom, "
              "/dev/urandom); NULL returned");
      return NULL;
    }
    st->random_left = sizeof st->random;
  }
  unsigned char *bytes = st->random + sizeof st->random - st->random_left;
  for (size_t i = 0; i < TOKEN_BYTES; i++) {
    st->pending[2 * i] = hex[bytes[i] >> 4];
    st->pending[2 * i + 1] = hex[bytes[i] & 15];
  }
  memset(bytes, 0, TOKEN_BYTES); /* handed out: not kept beside the ones to come */
  st->random_left -= TOKEN_BYTES;
  st->pending[TOKEN_HEX] = '\0';
  st->has_pending = true;
  memcpy(result, st->pending, TOKEN_HEX); /* mysqld's result buffer holds 255 bytes */
  *length = TOKEN_HEX;
  *is_null = 0;
  return result;
}
