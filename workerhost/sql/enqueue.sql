-- workerhost_enqueue(function, payload): put a job in the ledger (workerhost_outbox) from any
-- SQL: a hand-written trigger, a stored procedure, the application's own transaction. The row
-- is written in the caller's transaction, due at once: the relay of `workerhost run` ships it
-- after the commit, a rollback leaves nothing, and its job runs once and passes
-- `accept: ledger`, as a generated trigger's does. Its token comes from the column's default.
--
-- SQL SECURITY DEFINER: it writes the ledger with the rights of the account that created it,
-- so the right to enqueue is EXECUTE on this procedure, with no privilege on the ledger:
--   GRANT EXECUTE ON PROCEDURE `<database>`.workerhost_enqueue TO '<account>'@'<host>';
--
-- `workerhost triggers --apply` creates it when it is missing. IF NOT EXISTS rather than DROP
-- then CREATE: dropping a procedure drops the EXECUTE grants made on it.
CREATE PROCEDURE IF NOT EXISTS workerhost_enqueue(IN job_function VARCHAR(255),
                                                  IN job_payload LONGBLOB)
    MODIFIES SQL DATA
    SQL SECURITY DEFINER
    COMMENT 'workerhost: enqueue a job in the ledger, in the caller''s transaction'
INSERT INTO workerhost_outbox (`function`, payload) VALUES (job_function, job_payload);
