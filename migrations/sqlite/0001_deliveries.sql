-- Deliveries, their attempts, the provider references that receipts correlate by, and
-- idempotency records. Times are Unix milliseconds (UTC).

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    -- The API client (token name) that enqueued it; billing clients see only their own.
    client          TEXT NOT NULL,
    msisdn          TEXT NOT NULL,
    channel         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'submitted', 'delivered',
                        'retry_wait', 'in_doubt', 'failed', 'expired', 'cancelled')),
    -- AES-256-GCM(nonce || ciphertext) of the PIN, bound to the id; NULL once final.
    pin_ct          BLOB,
    amount_value    TEXT,
    amount_currency TEXT,
    payee           TEXT,
    expires_at      INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- Deadline for the receipt of a submitted delivery; NULL when none is awaited.
    receipt_due     INTEGER,
    last_error      TEXT,
    final           INTEGER NOT NULL DEFAULT 0 CHECK (final IN (0, 1)),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at)
    WHERE state IN ('queued', 'retry_wait');
CREATE INDEX deliveries_expiring ON deliveries (expires_at)
    WHERE state IN ('queued', 'retry_wait', 'in_doubt');
CREATE INDEX deliveries_in_doubt ON deliveries (next_attempt_at) WHERE state = 'in_doubt';
CREATE INDEX deliveries_receipt_due ON deliveries (receipt_due) WHERE receipt_due IS NOT NULL;
CREATE INDEX deliveries_sending ON deliveries (state) WHERE state = 'sending';

CREATE TABLE attempts (
    delivery_id  TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    channel      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    outcome      TEXT NOT NULL CHECK (outcome IN ('submitted', 'delivered', 'undeliverable',
                     'expired', 'unknown', 'transient', 'permanent', 'in_doubt')),
    provider_ref TEXT,
    error        TEXT,
    PRIMARY KEY (delivery_id, seq)
) WITHOUT ROWID;

-- One row per part the peer accepted. ref_key is the reference normalised (lower case,
-- no leading zeros); alt_key is the same number read as hex and written in decimal,
-- because SMSCs answer submit_sm in hex and write receipts in decimal.
CREATE TABLE message_parts (
    channel     TEXT NOT NULL,
    ref_key     TEXT NOT NULL,
    alt_key     TEXT,
    delivery_id TEXT NOT NULL,
    attempt_seq INTEGER NOT NULL,
    status      TEXT
);
CREATE INDEX message_parts_ref ON message_parts (channel, ref_key);
CREATE INDEX message_parts_alt ON message_parts (channel, alt_key) WHERE alt_key IS NOT NULL;
CREATE INDEX message_parts_delivery ON message_parts (delivery_id, attempt_seq);

-- Receipts that arrived before the submit response that names their reference was stored.
CREATE TABLE early_receipts (
    channel     TEXT NOT NULL,
    ref_key     TEXT NOT NULL,
    alt_key     TEXT,
    status      TEXT NOT NULL,
    error_code  TEXT,
    received_at INTEGER NOT NULL
);
CREATE INDEX early_receipts_ref ON early_receipts (channel, ref_key);

CREATE TABLE idempotency (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    delivery_id TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (client, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_created ON idempotency (created_at);
