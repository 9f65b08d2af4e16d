/* Stand-in for MySQL 8's mysql_version.h: only the version the UDF code tests. */
#ifndef GEARMAN_UDF_COMPAT_MYSQL_VERSION_H
#define GEARMAN_UDF_COMPAT_MYSQL_VERSION_H

#define MYSQL_SERVER_VERSION "8.0.36"
#define MYSQL_VERSION_ID 80036

#endif
