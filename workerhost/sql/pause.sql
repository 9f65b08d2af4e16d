-- workerhost_pause(function): `workerhost pause` from SQL (workerhost_resume, resume.sql, is
-- `workerhost resume`), on every host at once. Pausing records the function in
-- workerhost_paused (by whom: the caller's USER()) and parks its ledger rows (their due time
-- becomes a moment that never comes, so no relay ships them; a worker that gets a job of it
-- parks its row instead of running it). Resuming makes every parked row due again, and each
-- job runs once. Rows a worker is running when the pause comes are left to finish: the
-- UPDATE waits for them. Run them in a transaction of their own (autocommit), as the CLI does.
--
-- SQL SECURITY DEFINER, created by `workerhost triggers --apply` when missing: the right to
-- pause is EXECUTE on the procedure, with no privilege on the host's tables:
--   GRANT EXECUTE ON PROCEDURE `<database>`.workerhost_pause TO '<account>'@'<host>';
-- (and workerhost_resume, resume.sql, likewise). The DELIMITER lines are for the mysql client;
-- the host sends the statement between them.
DELIMITER //
CREATE PROCEDURE IF NOT EXISTS workerhost_pause(IN job_function VARCHAR(255))
    MODIFIES SQL DATA
    SQL SECURITY DEFINER
    COMMENT 'workerhost: pause a function on every host; its jobs wait in the ledger'
BEGIN
    INSERT INTO workerhost_paused (`function`, paused_by)
        VALUES (job_function, LEFT(CONCAT(USER(), ' (SQL)'), 255))
        ON DUPLICATE KEY UPDATE paused_by = paused_by;
    UPDATE workerhost_outbox SET not_before = '9999-12-31 00:00:00'
        WHERE `function` = job_function AND not_before < '9999-12-31 00:00:00';
END //
DELIMITER ;
