-- The example shop of `make demo` (examples/shop.yaml). Re-runnable: tables are dropped first.
-- Orders get a trigger from `workerhost triggers --apply`; the two handlers write back into
-- orders (confirm_order, SQL) and into order_points, loyalty and processed_events
-- (award_points, Python: examples/shop_jobs.py).

DROP TABLE IF EXISTS processed_events;
DROP TABLE IF EXISTS order_points;
DROP TABLE IF EXISTS loyalty;
DROP TABLE IF EXISTS orders;

CREATE TABLE orders (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer      VARCHAR(64) NOT NULL,
    total         DECIMAL(10, 2) NOT NULL,
    status        ENUM('new', 'confirmed') NOT NULL DEFAULT 'new',
    created_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    confirmed_at  DATETIME(6) NULL
) ENGINE=InnoDB;

-- One row per order, written by award_points; keyed by the order, so a re-run cannot add one.
CREATE TABLE order_points (
    order_id    BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    points      INT NOT NULL,
    event_id    CHAR(36) NOT NULL,
    written_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;

-- A running sum per customer: `points = points + n` is not idempotent by itself, so
-- award_points guards it with processed_events in the same transaction.
CREATE TABLE loyalty (
    customer  VARCHAR(64) NOT NULL PRIMARY KEY,
    points    INT NOT NULL,
    orders    INT NOT NULL
) ENGINE=InnoDB;

-- Events a handler has applied: the trigger's event_id is the key.
CREATE TABLE processed_events (
    event_id      CHAR(36) NOT NULL PRIMARY KEY,
    `function`    VARCHAR(255) NOT NULL,
    processed_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;
