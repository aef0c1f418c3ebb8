-- flashcart settlement ledger (SQLite). Every table that an event writes has a unique key
-- that makes a second apply of the same event impossible, not just unlikely.

-- One row per stream entry ever applied: the idempotency record, inserted first in the
-- batch's transaction (insert-then-check). Identity = (partition, stream entry id).
CREATE TABLE applied_events (
    part       INTEGER NOT NULL,
    entry_ms   INTEGER NOT NULL,
    entry_seq  INTEGER NOT NULL,
    type       TEXT    NOT NULL,
    sku        TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (part, entry_ms, entry_seq)
) WITHOUT ROWID;

CREATE TABLE skus (
    sku         TEXT    PRIMARY KEY,
    stock       INTEGER NOT NULL,
    segments    INTEGER NOT NULL,
    price       INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    starts_at   INTEGER NOT NULL,
    ends_at     INTEGER NOT NULL,
    buyer_limit INTEGER NOT NULL,
    ttl_ms      INTEGER NOT NULL,
    paywin_ms   INTEGER NOT NULL,
    loaded_at   INTEGER NOT NULL
);

CREATE TABLE sku_segments (
    sku       TEXT    NOT NULL,
    segment   INTEGER NOT NULL,
    part      INTEGER NOT NULL,
    initial   INTEGER NOT NULL,
    PRIMARY KEY (sku, segment)
) WITHOUT ROWID;

-- state: held | ordered | expired | cancelled
CREATE TABLE reservations (
    rsv        TEXT    PRIMARY KEY,
    sku        TEXT    NOT NULL,
    segment    INTEGER NOT NULL,
    qty        INTEGER NOT NULL,
    buyer      TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    closed_at  INTEGER
);
CREATE INDEX reservations_sku_state ON reservations (sku, state);

-- state: pending_payment | paid | cancelled | paid_after_cancel | refund_pending | refunded
-- sold_qty: units this order took for good (set when paid before its deadline).
CREATE TABLE orders (
    ord         TEXT    PRIMARY KEY,
    rsv         TEXT    NOT NULL UNIQUE,
    sku         TEXT    NOT NULL,
    segment     INTEGER NOT NULL,
    qty         INTEGER NOT NULL,
    buyer       TEXT    NOT NULL,
    amount      INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    deadline_at INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    sold_qty    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX orders_sku_state ON orders (sku, state);

-- Append-only: one row per order transition, keyed by the event that caused it.
CREATE TABLE order_events (
    part       INTEGER NOT NULL,
    entry_ms   INTEGER NOT NULL,
    entry_seq  INTEGER NOT NULL,
    ord        TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    detail     TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (part, entry_ms, entry_seq)
) WITHOUT ROWID;
CREATE INDEX order_events_ord ON order_events (ord);

-- outcome: captured | after_cancel | rejected_amount_mismatch | rejected_duplicate_payment
CREATE TABLE payments (
    psp_event TEXT    PRIMARY KEY,
    ord       TEXT    NOT NULL,
    amount    INTEGER NOT NULL,
    currency  TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX payments_ord ON payments (ord);

-- state: to_request (settlement must ask Redis) | requested | refunded
CREATE TABLE refunds (
    ord          TEXT    PRIMARY KEY,
    psp_event    TEXT,
    amount       INTEGER,
    currency     TEXT,
    state        TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX refunds_state ON refunds (state);
