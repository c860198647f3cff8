-- The delivery queue on PostgreSQL, shared by several pinpost nodes. Same columns and
-- meanings as the SQLite schema (times are Unix milliseconds, UTC), plus the lease a node
-- holds on the deliveries it is sending.

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    client          TEXT NOT NULL,
    msisdn          TEXT NOT NULL,
    channel         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'submitted', 'delivered',
                        'retry_wait', 'in_doubt', 'failed', 'expired', 'cancelled')),
    -- AES-256-GCM(nonce || ciphertext) of the PIN, bound to the id; NULL once final.
    pin_ct          BYTEA,
    amount_value    TEXT,
    amount_currency TEXT,
    payee           TEXT,
    expires_at      BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    receipt_due     BIGINT,
    last_error      TEXT,
    final           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    callback_url    TEXT,
    address         TEXT,
    step            BIGINT NOT NULL DEFAULT 0,
    step_attempts   BIGINT NOT NULL DEFAULT 0,
    step_timeout_ms BIGINT,
    -- The node sending it (state 'sending'), and until when its lease holds.
    lease_owner     TEXT,
    lease_until     BIGINT
);

CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at)
    WHERE state IN ('queued', 'retry_wait');
CREATE INDEX deliveries_expiring ON deliveries (expires_at)
    WHERE state IN ('queued', 'retry_wait', 'in_doubt');
CREATE INDEX deliveries_in_doubt ON deliveries (next_attempt_at) WHERE state = 'in_doubt';
CREATE INDEX deliveries_receipt_due ON deliveries (receipt_due) WHERE receipt_due IS NOT NULL;
CREATE INDEX deliveries_leases ON deliveries (lease_owner, lease_until) WHERE state = 'sending';
CREATE INDEX deliveries_msisdn ON deliveries (msisdn, created_at);

CREATE TABLE attempts (
    delivery_id  TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    channel      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    outcome      TEXT NOT NULL CHECK (outcome IN ('submitted', 'delivered', 'undeliverable',
                     'expired', 'unknown', 'transient', 'permanent', 'in_doubt')),
    provider_ref TEXT,
    error        TEXT,
    step         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, seq)
);

-- One row per part the peer accepted; see the SQLite schema for ref_key and alt_key.
CREATE TABLE message_parts (
    part_id     BIGSERIAL PRIMARY KEY,
    channel     TEXT NOT NULL,
    ref_key     TEXT NOT NULL,
    alt_key     TEXT,
    delivery_id TEXT NOT NULL,
    attempt_seq BIGINT NOT NULL,
    status      TEXT
);
CREATE INDEX message_parts_ref ON message_parts (channel, ref_key);
CREATE INDEX message_parts_alt ON message_parts (channel, alt_key) WHERE alt_key IS NOT NULL;
CREATE INDEX message_parts_delivery ON message_parts (delivery_id, attempt_seq);

CREATE TABLE early_receipts (
    receipt_id  BIGSERIAL PRIMARY KEY,
    channel     TEXT NOT NULL,
    ref_key     TEXT NOT NULL,
    alt_key     TEXT,
    status      TEXT NOT NULL,
    error_code  TEXT,
    received_at BIGINT NOT NULL
);
CREATE INDEX early_receipts_ref ON early_receipts (channel, ref_key);
CREATE INDEX early_receipts_alt ON early_receipts (channel, alt_key) WHERE alt_key IS NOT NULL;

CREATE TABLE idempotency (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BYTEA NOT NULL,
    delivery_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (client, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);

-- Nodes that ran against this database, and when each last renewed its leases.
CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
