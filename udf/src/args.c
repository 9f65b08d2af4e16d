/*
 * args.c: per-statement state and xxx_init's checks of the arguments, shared by every
 * SQL function of the library.
 */
#include "args.h"
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool call_reserve(struct call *call, size_t n)
{
  if (n <= call->cap)
    return true;
  size_t cap = call->cap * 2 > n ? call->cap * 2 : n; /* WORK_DATA may come in many parts */
  char *p = realloc(call->buf, cap);
  if (p == NULL)
    return false;
  call->buf = p;
  call->cap = cap;
  return true;
}

bool call_append(struct call *call, const char *bytes, size_t n)
{
  if (n > MAX_PACKET - call->len || !call_reserve(call, call->len + n))
    return false;
  if (n)
    memcpy(call->buf + call->len, bytes, n);
  call->len += n;
  return true;
}

void call_deinit(UDF_INIT *initid)
{
  struct call *call = (struct call *)initid->ptr;
  if (call != NULL) {
    free(call->buf);
    free(call);
    initid->ptr = NULL;
  }
}

bool is_number(enum Item_result t)
{
  return t == INT_RESULT || t == REAL_RESULT || t == DECIMAL_RESULT;
}

/*
 * Fill xxx_init's message as "usage: problem". mysqld shows at most MESSAGE_SHOWN bytes of
 * it, so when both do not fit the problem goes first and the usage is cut instead.
 */
__attribute__((format(printf, 3, 4)))
void init_error(char *message, const char *usage, const char *fmt, ...)
{
  char problem[MESSAGE_SIZE / 2];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(problem, sizeof problem, fmt, ap);
  va_end(ap);
  if (strlen(usage) + 2 + strlen(problem) <= MESSAGE_SHOWN)
    snprintf(message, MESSAGE_SIZE, "%s: %s", usage, problem);
  else
    snprintf(message, MESSAGE_SIZE, "%s; usage: %s", problem, usage);
}

/*
 * Whether argument i is a literal written in the statement. mysqld gives xxx_init the value
 * of every constant argument, and NEW.col in a trigger, @var and a procedure's variables are
 * constants too: a bad value there must give NULL for that row, not fail the user's
 * statement. Both servers name an argument by its SQL text ('x', _utf8mb4'x', 12, -1.5e3,
 * NEW.col, @v), so a literal is told by its first characters.
 */
bool is_literal(UDF_ARGS *args, unsigned i)
{
  const struct udf_args_layout *full = (const struct udf_args_layout *)args;
  const char *s = full->attributes ? full->attributes[i] : NULL;
  size_t n = s ? full->attribute_lengths[i] : 0;
  if (args->args[i] == NULL || n == 0)
    return false;
  size_t k = 0; /* past an introducer: _charset, N, X or B */
  if (s[0] == '_') {
    while (++k < n && (s[k] == '_' || (s[k] >= '0' && s[k] <= '9') ||
                       (s[k] >= 'a' && s[k] <= 'z') || (s[k] >= 'A' && s[k] <= 'Z'))) {
    }
    while (k < n && s[k] == ' ')
      k++;
  } else if (n > 1 && strchr("NnXxBb", s[0]) != NULL && s[1] == '\'') {
    k = 1;
  }
  if (k < n && s[k] == '\'')
    return true;
  if (k > 0)
    return false;
  char text[64]; /* a number, the whole of it */
  if (n >= sizeof text)
    return false;
  memcpy(text, s, n);
  text[n] = '\0';
  char *end;
  strtod(text, &end);
  return end == text + n;
}

/* unix_time as mysqld gives a constant to xxx_init: true if it is 0..MAX_EPOCH. */
bool const_epoch_ok(enum Item_result type, const char *value, unsigned long length)
{
  if (type == INT_RESULT) {
    long long v = *(const long long *)value;
    return v >= 0 && v <= MAX_EPOCH;
  }
  double v;
  if (type == REAL_RESULT) {
    v = *(const double *)value;
  } else { /* DECIMAL_RESULT: its digits, not NUL-terminated */
    char digits[80];
    snprintf(digits, sizeof digits, "%.*s", (int)(length < 79 ? length : 79), value);
    v = strtod(digits, NULL);
  }
  return v >= 0 && v < (double)MAX_EPOCH + 1;
}

/* xxx_init's check of argument i, a function name: false, and the message filled, if it is
 * not a string or is a literal that gearmand could not take. */
bool function_arg_ok(const char *usage, UDF_ARGS *args, unsigned i, char *message)
{
  const char *problem;
  if (args->arg_type[i] != STRING_RESULT) {
    init_error(message, usage, "function must be a string");
    return false;
  }
  if (is_literal(args, i) && args->lengths[i] == 0) {
    init_error(message, usage, "function must not be empty");
    return false;
  }
  if (is_literal(args, i) &&
      (problem = name_problem(args->args[i], args->lengths[i], MAX_FUNCTION)) != NULL) {
    init_error(message, usage, "function %s", problem);
    return false;
  }
  return true;
}

