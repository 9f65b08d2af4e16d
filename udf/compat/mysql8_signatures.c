/*
 * Compiled by `make check-mysql8`, beside every file of src/ against MySQL 8's UDF types:
 * a check that every entry point has the exact type mysqld will call it through.
 */
#include "../src/gearman_udf.h"

#define CHECK_STRING_UDF(name)                                                             \
  static const Udf_func_init name##_init_type __attribute__((unused)) = name##_init;       \
  static const Udf_func_deinit name##_deinit_type __attribute__((unused)) = name##_deinit; \
  static const Udf_func_string name##_type __attribute__((unused)) = name;

/* An aggregate (CREATE AGGREGATE FUNCTION ... RETURNS INTEGER): clear and add besides. */
#define CHECK_AGGREGATE_UDF(name)                                                          \
  static const Udf_func_init name##_init_type __attribute__((unused)) = name##_init;       \
  static const Udf_func_deinit name##_deinit_type __attribute__((unused)) = name##_deinit; \
  static const Udf_func_clear name##_clear_type __attribute__((unused)) = name##_clear;    \
  static const Udf_func_add name##_add_type __attribute__((unused)) = name##_add;          \
  static const Udf_func_longlong name##_type __attribute__((unused)) = name;

/* Every function of the library: the list is gearman_udf.h's own. */
GMU_FUNCTIONS(CHECK_STRING_UDF, CHECK_AGGREGATE_UDF)
