/*
 * args.h: what every SQL function of the library does alike (args.c): its signature, its
 * per-statement state, and xxx_init's checks of its arguments. As in MariaDB's
 * udf_example.c: xxx_init checks and coerces the arguments and is the only place a message
 * reaches the user; per-statement state lives in initid->ptr and is freed in xxx_deinit;
 * string arguments are pointer plus length, never NUL-terminated, never written to.
 */
#ifndef GMU_ARGS_H
#define GMU_ARGS_H

#include "gearman_udf.h"

/*
 * UDF_ARGS as both servers pass it. Their server headers declare each argument's name
 * (attributes) after maybe_null, as MariaDB's udf_example.c reads them; Connector/C's copy
 * of the struct, which MariaDB builds compile against, ends at maybe_null.
 */
struct udf_args_layout {
  unsigned int arg_count;
  enum Item_result *arg_type;
  char **args;
  unsigned long *lengths;
  char *maybe_null;
  char **attributes;
  unsigned long *attribute_lengths;
};
_Static_assert(offsetof(struct udf_args_layout, maybe_null) == offsetof(UDF_ARGS, maybe_null),
               "UDF_ARGS starts as mysqld's does");

/* The size of the message buffer xxx_init may fill; MYSQL_ERRMSG_SIZE in both servers. */
#ifdef MYSQL_ERRMSG_SIZE
#define MESSAGE_SIZE MYSQL_ERRMSG_SIZE
#else
#define MESSAGE_SIZE 512
#endif
/* ...of which the user sees this much: "Can't initialize function '%s'; %-.80s". */
#define MESSAGE_SHOWN 80

enum job_kind { JOB_FOREGROUND, JOB_BACKGROUND, JOB_EPOCH };
enum priority { PRIORITY_NORMAL, PRIORITY_HIGH, PRIORITY_LOW };

struct udf_spec {
  const char *usage;    /* the signature, as shown in every init message */
  enum job_kind kind;
  enum priority priority;
  bool unacknowledged;  /* gman_ship: the acknowledgement is read later, see the header */
};

struct job {
  const char *function;
  size_t function_len;
  const char *unique;
  size_t unique_len;
  const char *workload;
  size_t workload_len;
  long long epoch;
};

/* Per-statement state in initid->ptr: the bytes the row function returns. */
struct call {
  const struct udf_spec *spec;
  char *buf;
  size_t cap;
  size_t len;
  char unique[GENERATED_UNIQUE_LEN + 1];
};

bool call_reserve(struct call *call, size_t n);
bool call_append(struct call *call, const char *bytes, size_t n);
/* xxx_deinit of every function whose initid->ptr is a struct call. */
void call_deinit(UDF_INIT *initid);
#define CALL_DEINIT(name)                                                                  \
  UDF_EXPORT void name##_deinit(UDF_INIT *initid)                                          \
  {                                                                                        \
    call_deinit(initid);                                                                   \
  }

bool is_number(enum Item_result t);
/*
 * Fill xxx_init's message as "usage: problem". mysqld shows at most MESSAGE_SHOWN bytes of
 * it, so when both do not fit the problem goes first and the usage is cut instead.
 */
__attribute__((format(printf, 3, 4)))
void init_error(char *message, const char *usage, const char *fmt, ...);
/* Whether argument i is a literal written in the statement (not NEW.col, @v, ...). */
bool is_literal(UDF_ARGS *args, unsigned i);
/* unix_time as mysqld gives a constant to xxx_init: true if it is 0..MAX_EPOCH. */
bool const_epoch_ok(enum Item_result type, const char *value, unsigned long length);
/* xxx_init's check of argument i, a function name: false, and the message filled, if it is
 * not a string or is a literal that gearmand could not take. */
bool function_arg_ok(const char *usage, UDF_ARGS *args, unsigned i, char *message);

#endif
