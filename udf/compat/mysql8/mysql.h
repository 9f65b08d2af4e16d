/*
 * A stand-in for MySQL 8's <mysql.h>, reduced to what a UDF sees, so that
 * `make -C udf check-mysql8` can prove gearman_udf.c compiles against the bool-based
 * UDF_INIT when real MySQL 8 headers are absent. Not for linking: no client API here.
 */
#ifndef GEARMAN_UDF_COMPAT_MYSQL_H
#define GEARMAN_UDF_COMPAT_MYSQL_H

#include <stdbool.h>

#include "mysql_version.h"
#include "mysql/udf_registration_types.h"

#define MYSQL_ERRMSG_SIZE 512

#endif
