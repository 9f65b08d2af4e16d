-- Install the Gearman UDFs (udf/build/gearman_udf.so, copied into mysqld's plugin_dir).
-- Re-runnable: each function is dropped first. Works on MariaDB 10.x and MySQL 8.
-- Mirror: sql/uninstall.sql.

DROP FUNCTION IF EXISTS gman_do_background;
CREATE FUNCTION gman_do_background RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_do_high_background;
CREATE FUNCTION gman_do_high_background RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_do_low_background;
CREATE FUNCTION gman_do_low_background RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_do_epoch_background;
CREATE FUNCTION gman_do_epoch_background RETURNS STRING SONAME 'gearman_udf.so';

-- A background job sent without waiting for gearmand's acknowledgement (triggers of the
-- host's immediate delivery, whose ledger rows keep the job until it is done).
DROP FUNCTION IF EXISTS gman_ship;
CREATE FUNCTION gman_ship RETURNS STRING SONAME 'gearman_udf.so';

-- The same for the host's ledger rows: gman_token() makes the row's random token, and
-- gman_ship_ledger() sends the row's job with it, the token never passing through SQL.
DROP FUNCTION IF EXISTS gman_token;
CREATE FUNCTION gman_token RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_ship_ledger;
CREATE FUNCTION gman_ship_ledger RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_do;
CREATE FUNCTION gman_do RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_do_high;
CREATE FUNCTION gman_do_high RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_do_low;
CREATE FUNCTION gman_do_low RETURNS STRING SONAME 'gearman_udf.so';

-- An aggregate: each group's jobs run side by side, their integer results summed.
DROP FUNCTION IF EXISTS gman_sum;
CREATE AGGREGATE FUNCTION gman_sum RETURNS INTEGER SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_servers_set;
CREATE FUNCTION gman_servers_set RETURNS STRING SONAME 'gearman_udf.so';

DROP FUNCTION IF EXISTS gman_udf_status;
CREATE FUNCTION gman_udf_status RETURNS STRING SONAME 'gearman_udf.so';
