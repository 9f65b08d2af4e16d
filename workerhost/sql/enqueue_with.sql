-- workerhost_enqueue_with(function, payload, options): workerhost_enqueue (enqueue.sql) with
-- options, a JSON object of any of
--   "delay": seconds from now (a number)     "run_at": 'YYYY-MM-DD hh:mm:ss[.ffffff]', the
--   "unique": the job's unique (a string)       server's time (one of delay and run_at)
--   "priority": "normal", "high" or "low"
-- e.g. CALL workerhost_enqueue_with('reindex', JSON_OBJECT('id', NEW.id),
--                                   JSON_OBJECT('unique', CONCAT('item-', NEW.id), 'delay', 5));
-- With a unique, a job of the function with that unique still pending takes this payload and
-- the earlier due time (its priority stays), and no row is added: many calls, one job. When
-- that job is running, the call adds a row of its own (the job may have read its data
-- already). An unknown option, a bad value or options that are not a JSON object fail the
-- call (SQLSTATE 45000).
--
-- SQL SECURITY DEFINER, created by `workerhost triggers --apply` when missing, and granted as
-- workerhost_enqueue is:
--   GRANT EXECUTE ON PROCEDURE `<database>`.workerhost_enqueue_with TO '<account>'@'<host>';
-- The DELIMITER lines are for the mysql client; the host sends the statement between them.
DELIMITER //
CREATE PROCEDURE IF NOT EXISTS workerhost_enqueue_with(IN job_function VARCHAR(255),
                                                       IN job_payload LONGBLOB,
                                                       IN job_options LONGTEXT)
    MODIFIES SQL DATA
    SQL SECURITY DEFINER
    COMMENT 'workerhost: enqueue a job with options (delay, run_at, unique, priority)'
BEGIN
    DECLARE opts LONGTEXT DEFAULT COALESCE(job_options, '{}');
    DECLARE job_unique VARCHAR(255);
    DECLARE job_priority VARCHAR(16);
    DECLARE job_delay DOUBLE;
    DECLARE job_due DATETIME(6);
    DECLARE known INT;
    DECLARE found_id BIGINT UNSIGNED;
    DECLARE running INT DEFAULT 0;
    IF NOT JSON_VALID(opts) THEN
        SET opts = '[]';  -- fails the next test: a JSON function of invalid JSON errs on MySQL
    END IF;
    IF JSON_TYPE(opts) <> 'OBJECT' THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
            'workerhost_enqueue_with: options must be a JSON object, e.g. {"delay": 30}';
    END IF;
    SET known = JSON_CONTAINS_PATH(opts, 'one', '$.delay')
              + JSON_CONTAINS_PATH(opts, 'one', '$.run_at')
              + JSON_CONTAINS_PATH(opts, 'one', '$.unique')
              + JSON_CONTAINS_PATH(opts, 'one', '$.priority');
    IF JSON_LENGTH(opts) > known THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
            'workerhost_enqueue_with: unknown option (known: delay, run_at, unique, priority)';
    END IF;
    IF JSON_CONTAINS_PATH(opts, 'one', '$.delay')
       AND JSON_CONTAINS_PATH(opts, 'one', '$.run_at') THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
            'workerhost_enqueue_with: give delay or run_at, not both';
    END IF;
    IF JSON_CONTAINS_PATH(opts, 'one', '$.delay') THEN
        IF JSON_TYPE(JSON_EXTRACT(opts, '$.delay'))
               NOT IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')
           OR JSON_EXTRACT(opts, '$.delay') < 0 THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
                'workerhost_enqueue_with: delay must be a number of seconds, 0 or more';
        END IF;
        SET job_delay = JSON_EXTRACT(opts, '$.delay');
    END IF;
    SET job_due = NOW(6) + INTERVAL CAST(ROUND(COALESCE(job_delay, 0) * 1000000) AS SIGNED)
                  MICROSECOND;
    IF JSON_CONTAINS_PATH(opts, 'one', '$.run_at') THEN
        BEGIN  -- strict mode makes a bad time an error: it becomes the message below
            DECLARE CONTINUE HANDLER FOR SQLEXCEPTION, SQLWARNING SET job_due = NULL;
            SET job_due = CAST(JSON_UNQUOTE(JSON_EXTRACT(opts, '$.run_at')) AS DATETIME(6));
        END;
        IF JSON_TYPE(JSON_EXTRACT(opts, '$.run_at')) <> 'STRING' OR job_due IS NULL THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
                'workerhost_enqueue_with: run_at must be a time like "2030-01-31 18:00:00"';
        END IF;
    END IF;
    IF JSON_CONTAINS_PATH(opts, 'one', '$.unique') THEN
        IF JSON_TYPE(JSON_EXTRACT(opts, '$.unique')) <> 'STRING'
           OR CHAR_LENGTH(JSON_UNQUOTE(JSON_EXTRACT(opts, '$.unique'))) NOT BETWEEN 1 AND 255
        THEN
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
                'workerhost_enqueue_with: unique must be a string of 1 to 255 characters';
        END IF;
        SET job_unique = JSON_UNQUOTE(JSON_EXTRACT(opts, '$.unique'));
    END IF;
    SET job_priority = COALESCE(JSON_UNQUOTE(JSON_EXTRACT(opts, '$.priority')), 'normal');
    IF job_priority NOT IN ('normal', 'high', 'low') THEN
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT =
            'workerhost_enqueue_with: priority must be one of normal, high, low';
    END IF;
    -- As ledger.enqueue(merge=True) writes it: the pending row is locked by its id, never
    -- through the unique index (a running job's DELETE would deadlock with that); a running
    -- one (locked: SKIP LOCKED skips it; NOWAIT is not allowed here) gets a row apart; a leased row keeps its lease (made due, it
    -- would ship twice); a paused one stays parked.
    IF job_unique IS NOT NULL THEN
        SELECT MIN(id) INTO found_id FROM workerhost_outbox
            WHERE `function` = job_function AND merge_key = job_unique;
        IF found_id IS NOT NULL THEN
            BEGIN  -- skipped: held by another transaction (or gone since), either way apart
                DECLARE CONTINUE HANDLER FOR NOT FOUND SET running = 1;
                SELECT id INTO found_id FROM workerhost_outbox
                    WHERE id = found_id FOR UPDATE SKIP LOCKED;
            END;
        END IF;
        IF found_id IS NOT NULL AND running = 0 THEN
            UPDATE workerhost_outbox
                SET not_before = IF(ships = 0 AND not_before < '9999-12-31 00:00:00',
                                    LEAST(not_before, job_due), not_before),
                    payload = job_payload
                WHERE id = found_id;
        END IF;
    END IF;
    IF found_id IS NULL OR running = 1 THEN
        INSERT INTO workerhost_outbox (`function`, payload, unique_key, merge_key, not_before,
                                       priority)
            VALUES (job_function, job_payload, job_unique, IF(running = 1, NULL, job_unique),
                    job_due, job_priority)
            ON DUPLICATE KEY UPDATE
                not_before = IF(ships = 0 AND not_before < '9999-12-31 00:00:00',
                                LEAST(not_before, job_due), not_before),
                payload = job_payload;
    END IF;
END//
DELIMITER ;
