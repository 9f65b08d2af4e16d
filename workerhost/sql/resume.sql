-- workerhost_resume(function): `workerhost resume` from SQL (see pause.sql): the function is
-- no longer paused, and its parked ledger rows are due at once, each job to run once.
--   GRANT EXECUTE ON PROCEDURE `<database>`.workerhost_resume TO '<account>'@'<host>';
-- The DELIMITER lines are for the mysql client; the host sends the statement between them.
DELIMITER //
CREATE PROCEDURE IF NOT EXISTS workerhost_resume(IN job_function VARCHAR(255))
    MODIFIES SQL DATA
    SQL SECURITY DEFINER
    COMMENT 'workerhost: resume a paused function; its parked jobs are due again'
BEGIN
    DELETE FROM workerhost_paused WHERE `function` = job_function;
    UPDATE workerhost_outbox SET not_before = NOW(6), ships = 0
        WHERE not_before >= '9999-12-31 00:00:00' AND `function` = job_function;
END //
DELIMITER ;
