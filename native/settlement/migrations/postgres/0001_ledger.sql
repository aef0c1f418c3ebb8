-- flashcart settlement ledger (PostgreSQL). Every table that an event writes has a unique key
-- that makes a second apply of the same event impossible, not just unlikely.

-- One row per stream entry ever applied: the idempotency record, inserted first in the
-- batch's transaction (insert-then-check). Identity = (partition, stream entry id).
CREATE TABLE applied_events (
    part       BIGINT  NOT NULL,
    entry_ms   BIGINT  NOT NULL,
    entry_seq  BIGINT  NOT NULL,
    type       TEXT    NOT NULL,
    sku        TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    PRIMARY KEY (part, entry_ms, entry_seq)
);

CREATE TABLE skus (
    sku         TEXT    PRIMARY KEY,
    stock       BIGINT  NOT NULL,
    segments    BIGINT  NOT NULL,
    price       BIGINT  NOT NULL,
    currency    TEXT    NOT NULL,
    starts_at   BIGINT  NOT NULL,
    ends_at     BIGINT  NOT NULL,
    buyer_limit BIGINT  NOT NULL,
    ttl_ms      BIGINT  NOT NULL,
    paywin_ms   BIGINT  NOT NULL,
    loaded_at   BIGINT  NOT NULL
);

CREATE TABLE sku_segments (
    sku       TEXT    NOT NULL,
    segment   BIGINT  NOT NULL,
    part      BIGINT  NOT NULL,
    initial   BIGINT  NOT NULL,
    PRIMARY KEY (sku, segment)
);

-- state: held | ordered | expired | cancelled
CREATE TABLE reservations (
    rsv        TEXT    PRIMARY KEY,
    sku        TEXT    NOT NULL,
    segment    BIGINT  NOT NULL,
    qty        BIGINT  NOT NULL,
    buyer      TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL,
    state      TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    closed_at  BIGINT
);
CREATE INDEX reservations_sku_state ON reservations (sku, state);

-- state: pending_payment | paid | cancelled | paid_after_cancel | refund_pending | refunded
-- sold_qty: units this order took for good (set when paid before its deadline).
CREATE TABLE orders (
    ord         TEXT    PRIMARY KEY,
    rsv         TEXT    NOT NULL UNIQUE,
    sku         TEXT    NOT NULL,
    segment     BIGINT  NOT NULL,
    qty         BIGINT  NOT NULL,
    buyer       TEXT    NOT NULL,
    amount      BIGINT  NOT NULL,
    currency    TEXT    NOT NULL,
    deadline_at BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    sold_qty    BIGINT  NOT NULL DEFAULT 0,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX orders_sku_state ON orders (sku, state);

-- Append-only: one row per order transition, keyed by the event that caused it.
CREATE TABLE order_events (
    part       BIGINT  NOT NULL,
    entry_ms   BIGINT  NOT NULL,
    entry_seq  BIGINT  NOT NULL,
    ord        TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    detail     TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (part, entry_ms, entry_seq)
);
CREATE INDEX order_events_ord ON order_events (ord);

-- outcome: captured | after_cancel | rejected_amount_mismatch | rejected_duplicate_payment
CREATE TABLE payments (
    psp_event TEXT    PRIMARY KEY,
    ord       TEXT    NOT NULL,
    amount    BIGINT  NOT NULL,
    currency  TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    at        BIGINT  NOT NULL
);
CREATE INDEX payments_ord ON payments (ord);

-- state: to_request (settlement must ask Redis) | requested | refunded
CREATE TABLE refunds (
    ord          TEXT    PRIMARY KEY,
    psp_event    TEXT,
    amount       BIGINT,
    currency     TEXT,
    state        TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX refunds_state ON refunds (state);
