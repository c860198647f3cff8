-- Vouchers (the PIN record), redemptions, the double-entry ledger, settlement runs, and the
-- outbox of signed status callbacks. Amounts are integers in ten-thousandths of the
-- currency unit ("12.5" is 125000), so that no currency needs floating point.

CREATE TABLE vouchers (
    id                TEXT PRIMARY KEY,
    client            TEXT NOT NULL,
    msisdn            TEXT NOT NULL,
    -- HMAC-SHA256 of the PIN under a key derived from the PIN key; the PIN itself is kept
    -- only encrypted in its delivery, and only until that delivery ends.
    pin_hash          BLOB NOT NULL UNIQUE,
    state             TEXT NOT NULL CHECK (state IN ('issued', 'delivered', 'partially_redeemed',
                          'redeemed', 'expired', 'revoked')),
    currency          TEXT NOT NULL,
    amount            INTEGER NOT NULL CHECK (amount > 0),
    remaining         INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    allow_partial     INTEGER NOT NULL DEFAULT 0 CHECK (allow_partial IN (0, 1)),
    -- A merchant id, or '*' for any merchant.
    payee             TEXT NOT NULL,
    msisdn_required   INTEGER NOT NULL DEFAULT 0 CHECK (msisdn_required IN (0, 1)),
    min_age           INTEGER,
    -- JSON array of ISO 3166 alpha-2 codes; NULL: any country.
    countries         TEXT,
    -- JSON object given by the issuer, returned as is.
    attributes        TEXT,
    funding_source    TEXT NOT NULL CHECK (funding_source IN ('credit_company', 'bank',
                          'carrier_bill', 'store')),
    institution       TEXT NOT NULL,
    funding_reference TEXT,
    expires_at        INTEGER NOT NULL,
    delivery_id       TEXT NOT NULL,
    callback_url      TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX vouchers_delivery ON vouchers (delivery_id);
CREATE INDEX vouchers_expiring ON vouchers (expires_at)
    WHERE state IN ('issued', 'delivered', 'partially_redeemed');

CREATE TABLE voucher_idempotency (
    client      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    voucher_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (client, key)
) WITHOUT ROWID;
CREATE INDEX voucher_idempotency_created ON voucher_idempotency (created_at);

CREATE TABLE redemptions (
    id              TEXT PRIMARY KEY,
    voucher_id      TEXT NOT NULL REFERENCES vouchers (id),
    merchant_id     TEXT NOT NULL,
    -- The merchant's reference for the purchase; one redemption per (merchant, order_ref),
    -- so a retried request returns the first answer instead of capturing twice.
    order_ref       TEXT NOT NULL,
    currency        TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    state           TEXT NOT NULL CHECK (state IN ('captured', 'reversed')),
    captured_at     INTEGER NOT NULL,
    reversed_at     INTEGER,
    -- The settlement run (UTC date) that paid it; NULL until then.
    settlement_date TEXT
) WITHOUT ROWID;
CREATE UNIQUE INDEX redemptions_order ON redemptions (merchant_id, order_ref);
CREATE INDEX redemptions_voucher ON redemptions (voucher_id);
CREATE INDEX redemptions_unsettled ON redemptions (captured_at)
    WHERE state = 'captured' AND settlement_date IS NULL;

-- Double entry: every row debits one account and credits another by the same amount, so
-- the ledger balances by construction. Accounts:
--   receivable:<institution>  what the funding institution owes the TTP
--   voucher_liability         value of vouchers that can still be redeemed
--   payable:<merchant>        what the TTP owes a merchant
--   settlement_cash           money moved in settlement runs
CREATE TABLE ledger (
    id              INTEGER PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('issue', 'redeem', 'reverse', 'release',
                        'settle_claim', 'settle_payout')),
    debit           TEXT NOT NULL,
    credit          TEXT NOT NULL,
    currency        TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    voucher_id      TEXT,
    redemption_id   TEXT,
    settlement_date TEXT,
    created_at      INTEGER NOT NULL,
    CHECK (debit <> credit)
);
CREATE INDEX ledger_voucher ON ledger (voucher_id) WHERE voucher_id IS NOT NULL;

CREATE TABLE settlements (
    date        TEXT PRIMARY KEY,
    redemptions INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE settlement_lines (
    date       TEXT NOT NULL REFERENCES settlements (date),
    party_kind TEXT NOT NULL CHECK (party_kind IN ('merchant', 'institution')),
    party      TEXT NOT NULL,
    currency   TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (date, party_kind, party, currency)
) WITHOUT ROWID;

-- Status callbacks to billing systems: written in the same transaction as the state change
-- they report (by the triggers below), sent and retried by the daemon until a 2xx or the
-- retry budget ends. The id is the callback's idempotency key.
ALTER TABLE deliveries ADD COLUMN callback_url TEXT;

CREATE TABLE callbacks (
    id              TEXT PRIMARY KEY,
    client          TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'abandoned')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX callbacks_due ON callbacks (next_attempt_at) WHERE state = 'pending';

-- A delivery that reaches its receipt moves its voucher from issued to delivered.
CREATE TRIGGER deliveries_voucher_delivered AFTER UPDATE OF state ON deliveries
WHEN NEW.state = 'delivered' AND OLD.state <> 'delivered'
BEGIN
    UPDATE vouchers SET state = 'delivered', updated_at = NEW.updated_at
    WHERE delivery_id = NEW.id AND state = 'issued';
END;

CREATE TRIGGER deliveries_callback AFTER UPDATE OF state, final ON deliveries
WHEN NEW.callback_url IS NOT NULL
    AND (NEW.state <> OLD.state OR NEW.final <> OLD.final)
    AND NEW.state NOT IN ('queued', 'sending')
BEGIN
    INSERT INTO callbacks (id, client, url, body, state, next_attempt_at, created_at, updated_at)
    VALUES (
        lower(hex(randomblob(16))), NEW.client, NEW.callback_url,
        json_object(
            'type', 'delivery.state',
            'occurred_at', strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at / 1000.0, 'unixepoch'),
            'delivery', json_object('id', NEW.id, 'state', NEW.state,
                'final', json(CASE WHEN NEW.final = 1 OR NEW.state IN ('delivered', 'failed',
                    'expired', 'cancelled') THEN 'true' ELSE 'false' END),
                'last_error', NEW.last_error),
            'voucher', json((SELECT json_object('id', v.id, 'state', v.state)
                             FROM vouchers v WHERE v.delivery_id = NEW.id))
        ),
        'pending', NEW.updated_at, NEW.updated_at, NEW.updated_at);
END;

CREATE TRIGGER vouchers_callback AFTER UPDATE OF state ON vouchers
WHEN NEW.callback_url IS NOT NULL AND NEW.state <> OLD.state
BEGIN
    INSERT INTO callbacks (id, client, url, body, state, next_attempt_at, created_at, updated_at)
    VALUES (
        lower(hex(randomblob(16))), NEW.client, NEW.callback_url,
        json_object(
            'type', 'voucher.state',
            'occurred_at', strftime('%Y-%m-%dT%H:%M:%fZ', NEW.updated_at / 1000.0, 'unixepoch'),
            'voucher', json_object('id', NEW.id, 'state', NEW.state),
            'delivery', json((SELECT json_object('id', d.id, 'state', d.state)
                              FROM deliveries d WHERE d.id = NEW.delivery_id))
        ),
        'pending', NEW.updated_at, NEW.updated_at, NEW.updated_at);
END;
