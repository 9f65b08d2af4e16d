-- The tables the worker host uses, in the application's database. Re-runnable.
-- `function` is quoted everywhere: it is a reserved word in MySQL since 8.0.1.
-- `workerhost run` creates them when they are missing; run this by hand where the host's
-- database user may not create tables.

-- The ledger: every job a trigger fires, from the transaction that fired it until the one
-- that commits its effect, which deletes the row. gearmand only dispatches: a job it loses is
-- shipped again when its lease runs out, and a job that runs twice finds its row gone the
-- second time. Rows are due at not_before: the relay ships due rows in id order and leases
-- them (not_before moves on, ships counts up); a failed attempt makes its row due again later.
-- Each row holds a random token (made by the server for every row, whoever writes it) that
-- every delivery of its job carries in its Gearman unique, L<id>:<token>: a job naming the row
-- without the token is refused, so no SQL account (which may call the UDF, but cannot read
-- this table) can make a row's job run, or count its failures, by forging its unique.
-- One secondary index, on the due time: a relay's poll reads the due rows, not the whole
-- leased backlog before them. Every trigger pays for each index on every row it writes here.
-- merge_key is a job's unique when it was enqueued with one (workerhost.enqueue(unique=...),
-- workerhost_enqueue_with): an enqueue of a unique whose job is pending merges into its row;
-- triggers leave it NULL, which the unique index never compares.
CREATE TABLE IF NOT EXISTS workerhost_outbox (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `function`  VARCHAR(255) NOT NULL,
    payload     LONGBLOB NOT NULL,
    unique_key  VARCHAR(255) NULL,
    priority    ENUM('normal', 'high', 'low') NOT NULL DEFAULT 'normal',
    not_before  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    ships       INT UNSIGNED NOT NULL DEFAULT 0,
    token       CHAR(32) CHARACTER SET ascii NOT NULL DEFAULT (HEX(RANDOM_BYTES(16))),
    snoozes     INT UNSIGNED NOT NULL DEFAULT 0,
    merge_key   VARCHAR(255) NULL,
    KEY due (not_before),
    UNIQUE KEY merge_key (`function`, merge_key)
) ENGINE=InnoDB;

-- The ledger as an operator reads it: each job's state (model/ledger_state.py: due, leased,
-- delayed, paused), its payload's size, never its token nor its payload.
--   SELECT * FROM workerhost_jobs WHERE state = 'due';
-- SQL SECURITY DEFINER: it reads the ledger with the rights of the account that created it (the
-- host's), so that SELECT on this view is all an operator's account needs, with no privilege on
-- the ledger and no way to read a token (which would let it forge a job's unique). Grant it
-- SELECT only: the view is over one table, so UPDATE or DELETE on it would reach the ledger.
-- A state is computed from NOW(6) for each row: a WHERE on it reads the whole ledger.
CREATE OR REPLACE SQL SECURITY DEFINER VIEW workerhost_jobs AS
SELECT id, `function`,
       CASE WHEN not_before = '9999-12-31 00:00:00' THEN 'paused'
            WHEN not_before <= NOW(6) THEN 'due'
            WHEN ships > 0 THEN 'leased'
            ELSE 'delayed' END AS state,
       priority, unique_key, not_before, created_at, ships, snoozes,
       LENGTH(payload) AS payload_bytes
FROM workerhost_outbox;

-- Failed attempts of jobs still in play, keyed by function and unique: a handler exception,
-- a timeout or a worker process that died. Cleared when the job succeeds or is dead-lettered.
CREATE TABLE IF NOT EXISTS workerhost_attempts (
    job_key     VARBINARY(520) NOT NULL PRIMARY KEY,
    failures    INT UNSIGNED NOT NULL,
    first_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_error  TEXT NULL,
    traceback   MEDIUMTEXT NULL
) ENGINE=InnoDB;

-- Jobs that used up their attempts; `workerhost dead-letters retry` ships them again.
CREATE TABLE IF NOT EXISTS workerhost_dead_letters (
    id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `function`       VARCHAR(255) NOT NULL,
    payload          LONGBLOB NOT NULL,
    unique_key       VARCHAR(255) NULL,
    attempts         INT UNSIGNED NOT NULL,
    error            TEXT NOT NULL,
    traceback        MEDIUMTEXT NULL,
    first_failed_at  DATETIME(6) NULL,
    failed_at        DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY by_function (`function`, id)
) ENGINE=InnoDB;

-- Deliveries refused because nothing proved their origin (no ledger row named, a token that
-- is not the row's, a row of another function): kept in bounded form only (never the whole
-- payload, the newest REFUSED_KEPT of them), so that forged jobs can neither fill the disk nor
-- ever be replayed: nothing moves a refused delivery back into the ledger.
CREATE TABLE IF NOT EXISTS workerhost_refused (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `function`   VARCHAR(255) NOT NULL,
    unique_key   VARBINARY(64) NOT NULL,
    size         BIGINT UNSIGNED NOT NULL,
    sha256       CHAR(64) CHARACTER SET ascii NOT NULL,
    head         VARBINARY(256) NOT NULL,
    reason       VARCHAR(512) NOT NULL,
    refused_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;

-- Functions paused (`workerhost pause FUNCTION`, on every host at once): their ledger rows are
-- parked (due at PARKED, a moment that never comes, so no relay ships them) until resumed.
CREATE TABLE IF NOT EXISTS workerhost_paused (
    `function`  VARCHAR(255) NOT NULL PRIMARY KEY,
    paused_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    paused_by   VARCHAR(255) NULL
) ENGINE=InnoDB;

-- A function's concurrency slots (handlers.NAME.limits.concurrency): a transaction that runs
-- its jobs holds one row locked, so no more transactions run them at once, on every host.
CREATE TABLE IF NOT EXISTS workerhost_slots (
    `function`  VARCHAR(255) NOT NULL,
    slot        INT UNSIGNED NOT NULL,
    PRIMARY KEY (`function`, slot)
) ENGINE=InnoDB;

-- A function's rate (handlers.NAME.limits.rate): a token bucket that refills at the rate, up
-- to a fifth of a second's worth. A transaction about to run jobs takes tokens from it in one
-- autocommitted UPDATE on a connection of its own, so that no host holds the row locked for
-- longer than that statement; jobs that get none wait in their worker, no attempt spent.
CREATE TABLE IF NOT EXISTS workerhost_rates (
    `function`   VARCHAR(255) NOT NULL PRIMARY KEY,
    tokens       DOUBLE NOT NULL,
    refilled_at  DATETIME(6) NOT NULL
) ENGINE=InnoDB;

-- How far each schedule (schedules: in the YAML) has got, in UTC. A slot fires by writing its
-- job to the outbox in the transaction that moves last_slot past it, with this row locked: no
-- two hosts fire the same slot. last_slot also moves past slots left out (catch_up);
-- fired_slot is the newest slot that fired, fired_by the host (name:pid) that fired it.
CREATE TABLE IF NOT EXISTS workerhost_schedules (
    name        VARCHAR(64) NOT NULL PRIMARY KEY,
    last_slot   DATETIME NOT NULL,
    fired_slot  DATETIME NULL,
    fired_at    DATETIME(6) NULL,
    fired_by    VARCHAR(255) NULL
) ENGINE=InnoDB;

-- Heartbeats: every worker process of every running host, as its supervisor last saw it (every
-- few seconds, heartbeat.py), for the console's workers page. A host deletes the rows of its
-- processes that ended, and all of its rows when it stops; a row not seen for three heartbeats
-- is of a host that died without a word (SIGKILL): the console leaves it out, and the next
-- host that starts deletes it. Times are UTC, by the database server's clock alone.
CREATE TABLE IF NOT EXISTS workerhost_workers (
    host            VARCHAR(255) NOT NULL,
    pid             INT UNSIGNED NOT NULL,
    supervisor_pid  INT UNSIGNED NOT NULL,
    `function`      VARCHAR(255) NOT NULL,
    `index`         INT UNSIGNED NOT NULL,
    state           VARCHAR(16) CHARACTER SET ascii NOT NULL,
    job             VARCHAR(520) CHARACTER SET utf8mb4 NULL,
    job_seconds     DOUBLE NULL,
    jobs            BIGINT UNSIGNED NOT NULL,
    resident_bytes  BIGINT UNSIGNED NULL,
    started_at      DATETIME(6) NOT NULL,
    seen_at         DATETIME(6) NOT NULL,
    PRIMARY KEY (host, pid)
) ENGINE=InnoDB;

-- The console's charts (console/samples.py): per minute since the epoch (UTC), the jobs each
-- function completed and failed, and in the row of function '' the ledger's rows and its
-- oldest row's age, as a console's sampler read them. A console writes the minutes it saw at
-- most once a minute, in one statement, deletes the rows older than a day once an hour, and
-- reads the last day when it starts: its charts outlive a restart. A minute has at most 42 rows
-- (40 functions by name, the others together, the ledger's).
CREATE TABLE IF NOT EXISTS workerhost_samples (
    epoch_minute  INT UNSIGNED NOT NULL,
    `function`    VARCHAR(255) NOT NULL,
    completed     INT UNSIGNED NOT NULL DEFAULT 0,
    failed        INT UNSIGNED NOT NULL DEFAULT 0,
    backlog       BIGINT UNSIGNED NULL,
    oldest        DOUBLE NULL,
    PRIMARY KEY (epoch_minute, `function`)
) ENGINE=InnoDB;

-- Console sessions ended by a logout (console/auth.py), each kept until it would have run out
-- anyway (ends_at, seconds since the epoch): a copy of the session's cookie is refused after a
-- restart of the console too, and by every console that starts on this database.
CREATE TABLE IF NOT EXISTS workerhost_logouts (
    sid      VARCHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    ends_at  BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB;
