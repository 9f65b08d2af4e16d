/*
 * Compiled by `make check-mysql8`: gearman_udf.c against MySQL 8's UDF types, plus a
 * check that every entry point has the exact type mysqld will call it through.
 */
#include "../gearman_udf.c"

#define CHECK_STRING_UDF(name)                                                             \
  static const Udf_func_init name##_init_type __attribute__((unused)) = name##_init;       \
  static const Udf_func_deinit name##_deinit_type __attribute__((unused)) = name##_deinit; \
  static const Udf_func_string name##_type __attribute__((unused)) = name;

CHECK_STRING_UDF(gman_do_background)
CHECK_STRING_UDF(gman_do_high_background)
CHECK_STRING_UDF(gman_do_low_background)
CHECK_STRING_UDF(gman_do_epoch_background)
CHECK_STRING_UDF(gman_do)
CHECK_STRING_UDF(gman_do_high)
CHECK_STRING_UDF(gman_do_low)
CHECK_STRING_UDF(gman_servers_set)
CHECK_STRING_UDF(gman_udf_status)

/* gman_sum is an aggregate: CREATE AGGREGATE FUNCTION ... RETURNS INTEGER. */
static const Udf_func_init gman_sum_init_type __attribute__((unused)) = gman_sum_init;
static const Udf_func_deinit gman_sum_deinit_type __attribute__((unused)) = gman_sum_deinit;
static const Udf_func_clear gman_sum_clear_type __attribute__((unused)) = gman_sum_clear;
static const Udf_func_add gman_sum_add_type __attribute__((unused)) = gman_sum_add;
static const Udf_func_longlong gman_sum_type __attribute__((unused)) = gman_sum;
