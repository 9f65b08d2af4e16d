-- Remove the Gearman UDFs; mirror of sql/install.sql. Re-runnable.
-- mysqld unloads gearman_udf.so once the last of them is dropped.

DROP FUNCTION IF EXISTS gman_do_background;
DROP FUNCTION IF EXISTS gman_do_high_background;
DROP FUNCTION IF EXISTS gman_do_low_background;
DROP FUNCTION IF EXISTS gman_do_epoch_background;
DROP FUNCTION IF EXISTS gman_ship;
DROP FUNCTION IF EXISTS gman_token;
DROP FUNCTION IF EXISTS gman_ship_ledger;
DROP FUNCTION IF EXISTS gman_do;
DROP FUNCTION IF EXISTS gman_do_high;
DROP FUNCTION IF EXISTS gman_do_low;
DROP FUNCTION IF EXISTS gman_sum;
DROP FUNCTION IF EXISTS gman_servers_set;
DROP FUNCTION IF EXISTS gman_udf_status;
