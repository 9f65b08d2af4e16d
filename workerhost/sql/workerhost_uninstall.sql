-- Mirror of workerhost.sql and enqueue.sql: drops the worker host's tables and everything in
-- them, and the procedure that writes to them.
DROP PROCEDURE IF EXISTS workerhost_enqueue;
DROP PROCEDURE IF EXISTS workerhost_enqueue_with;
DROP PROCEDURE IF EXISTS workerhost_pause;
DROP PROCEDURE IF EXISTS workerhost_resume;
DROP VIEW IF EXISTS workerhost_jobs;
DROP TABLE IF EXISTS workerhost_rates;
DROP TABLE IF EXISTS workerhost_logouts;
DROP TABLE IF EXISTS workerhost_samples;
DROP TABLE IF EXISTS workerhost_workers;
DROP TABLE IF EXISTS workerhost_schedules;
DROP TABLE IF EXISTS workerhost_refused;
DROP TABLE IF EXISTS workerhost_paused;
DROP TABLE IF EXISTS workerhost_slots;
DROP TABLE IF EXISTS workerhost_dead_letters;
DROP TABLE IF EXISTS workerhost_attempts;
DROP TABLE IF EXISTS workerhost_outbox;
