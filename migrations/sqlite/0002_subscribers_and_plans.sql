-- Subscribers keyed by E.164 number, their registered devices, and delivery plans: the
-- devices a delivery tries in priority order, snapshotted when it is enqueued.

CREATE TABLE subscribers (
    msisdn     TEXT PRIMARY KEY,
    name       TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE devices (
    id              TEXT PRIMARY KEY,
    msisdn          TEXT NOT NULL REFERENCES subscribers (msisdn) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN ('sms', 'ussd', 'pager', 'fax', 'email', 'carnav')),
    address         TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    -- How long a step on this device waits for its receipt before the next device is tried.
    step_timeout_ms INTEGER,
    options         TEXT,
    created_at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX devices_by_subscriber ON devices (msisdn, priority, created_at);

-- Steps of a delivery's plan. A delivery without rows here has one implicit step: SMS to
-- its msisdn on the default channel.
CREATE TABLE delivery_steps (
    delivery_id     TEXT NOT NULL,
    step            INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    address         TEXT NOT NULL,
    device_id       TEXT,
    step_timeout_ms INTEGER,
    channel         TEXT,
    outcome         TEXT CHECK (outcome IN ('delivered', 'failed', 'timed_out', 'skipped', 'expired', 'cancelled', 'unknown')),
    reason          TEXT,
    started_at      INTEGER,
    ended_at        INTEGER,
    PRIMARY KEY (delivery_id, step)
) WITHOUT ROWID;

-- The current step of a delivery: its device address (NULL: the msisdn), its number, the
-- attempts made on it, and its receipt wait when a later step exists (NULL otherwise).
ALTER TABLE deliveries ADD COLUMN address TEXT;
ALTER TABLE deliveries ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN step_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN step_timeout_ms INTEGER;
ALTER TABLE attempts ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
