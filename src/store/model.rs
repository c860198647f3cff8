//! The delivery state machine and the rows exchanged with the store.

use pinpost_channel_core::ReceiptStatus;

/// `queued -> sending -> submitted -> delivered`, with `retry_wait`, `in_doubt`, `failed`,
/// `expired` and `cancelled`. Stored as text under a CHECK constraint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[schema(as = DeliveryState)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Sending,
    Submitted,
    Delivered,
    RetryWait,
    InDoubt,
    Failed,
    Expired,
    Cancelled,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Queued,
        State::Sending,
        State::Submitted,
        State::Delivered,
        State::RetryWait,
        State::InDoubt,
        State::Failed,
        State::Expired,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Sending => "sending",
            State::Submitted => "submitted",
            State::Delivered => "delivered",
            State::RetryWait => "retry_wait",
            State::InDoubt => "in_doubt",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Delivered | State::Failed | State::Expired | State::Cancelled
        )
    }
}

/// What the API hands the store for a new delivery.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub msisdn: String,
    pub channel: String,
    pub pin_ct: Vec<u8>,
    pub amount_value: Option<String>,
    pub amount_currency: Option<String>,
    pub payee: Option<String>,
    pub expires_at: Option<i64>,
    pub now: i64,
    /// The API client (token name) the idempotency key belongs to.
    pub client: String,
    pub idempotency_key: String,
    /// Keyed hash of the request's canonical form.
    pub fingerprint: [u8; 32],
    /// Where state changes are reported (signed callbacks); `None`: not reported.
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Created {
        id: String,
    },
    /// Same key, same request: the delivery stored the first time.
    Replay {
        id: String,
    },
    /// Same key, different request.
    Conflict,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: String,
    /// The current step's device address (the msisdn for SMS).
    pub address: String,
    pub pin_ct: Option<Vec<u8>>,
    pub amount_value: Option<String>,
    pub amount_currency: Option<String>,
    pub payee: Option<String>,
    pub expires_at: Option<i64>,
    /// Attempts made on the current step before this one.
    pub attempts: u32,
    /// When the delivery was enqueued (Unix ms).
    pub created_at: i64,
}

/// The outcome of one attempt, as the dispatcher decided it.
#[derive(Debug, Clone)]
pub struct Finish {
    pub id: String,
    pub channel: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub result: FinishResult,
}

#[derive(Debug, Clone)]
pub enum FinishResult {
    /// The peer accepted; wait up to `receipt_timeout_ms` (shortened to the step timeout
    /// when another device follows) for receipts on these references. None: no receipt
    /// will come, the delivery is final as submitted.
    Submitted {
        refs: Vec<String>,
        receipt_timeout_ms: Option<i64>,
    },
    /// Counted attempt that failed; the delivery moves to `next` (`retry_wait` with
    /// `next_attempt_at`, `failed`, or `in_doubt` with the reconciliation deadline).
    Attempted {
        outcome: AttemptOutcome,
        error: String,
        next: State,
        next_attempt_at: i64,
    },
    /// Not an attempt (throttled, channel down): back to `queued` at `next_attempt_at`.
    NotAttempted { error: String, next_attempt_at: i64 },
    /// The PIN expired before the send.
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Transient,
    Permanent,
    InDoubt,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Transient => "transient",
            AttemptOutcome::Permanent => "permanent",
            AttemptOutcome::InDoubt => "in_doubt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReceiptIn {
    pub channel: String,
    pub provider_ref: String,
    pub status: ReceiptStatus,
    pub error_code: Option<String>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    NotFound,
    /// Too late: the delivery is in this state.
    Conflict(State),
}

#[derive(Debug, Clone, Copy)]
pub struct SweepParams {
    pub now: i64,
    pub in_doubt_resend: bool,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub in_doubt_resent: usize,
    pub in_doubt_failed: usize,
    pub receipts_timed_out: usize,
    /// Deliveries that fell through to their next device after a step timeout.
    pub steps_advanced: usize,
    pub idempotency_purged: usize,
    /// Vouchers whose expiry passed; their remaining value was released.
    pub vouchers_expired: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AttemptView {
    pub seq: i64,
    pub step: i64,
    pub channel: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: String,
    pub provider_ref: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: String,
    pub msisdn: String,
    pub channel: String,
    pub state: State,
    pub amount_value: Option<String>,
    pub amount_currency: Option<String>,
    pub payee: Option<String>,
    pub expires_at: Option<i64>,
    pub attempt_count: i64,
    pub last_error: Option<String>,
    pub is_final: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub client: String,
    pub attempts: Vec<AttemptView>,
    pub steps: Vec<StepView>,
}

/// One step of a delivery's plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepView {
    pub step: i64,
    pub kind: String,
    pub address: String,
    pub channel: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
}

/// What the writer needs to build delivery plans.
#[derive(Debug, Clone, Default)]
pub struct PlanSettings {
    /// Device kind ("sms", "email", ...) to the id of the channel that serves it.
    pub routes: std::collections::HashMap<String, String>,
    /// Step timeout for devices registered without one.
    pub default_step_timeout_ms: i64,
}

/// How a part's receipt is stored in `message_parts.status`.
pub(crate) fn part_status(s: ReceiptStatus) -> &'static str {
    match s {
        ReceiptStatus::Delivered => "delivered",
        ReceiptStatus::Undeliverable => "undeliverable",
        ReceiptStatus::Expired => "expired",
        ReceiptStatus::Unknown | ReceiptStatus::Pending => "unknown",
    }
}

/// A stored part status read back.
pub(crate) fn status_from_part(s: &str) -> ReceiptStatus {
    match s {
        "delivered" => ReceiptStatus::Delivered,
        "undeliverable" => ReceiptStatus::Undeliverable,
        "expired" => ReceiptStatus::Expired,
        _ => ReceiptStatus::Unknown,
    }
}

/// What a final receipt does to its delivery, given the parts of its attempt still
/// `pending`, `delivered` and `unknown` (this receipt's part counted): `None` while parts
/// are pending and none failed; otherwise the delivery's new state, the attempt's outcome
/// and its error text. One failed part fails the message.
pub(crate) fn receipt_verdict(
    r: &ReceiptIn,
    pending: i64,
    delivered: i64,
    unknown: i64,
) -> Option<(State, &'static str, Option<String>)> {
    let failed_now = matches!(
        r.status,
        ReceiptStatus::Undeliverable | ReceiptStatus::Expired
    );
    if pending > 0 && !failed_now {
        return None;
    }
    let err_text = r
        .error_code
        .as_deref()
        .map(|c| format!(" (error {c})"))
        .unwrap_or_default();
    Some(if failed_now {
        let what = if r.status == ReceiptStatus::Expired {
            "expired"
        } else {
            "undeliverable"
        };
        (
            State::Failed,
            what,
            Some(format!("receipt: {what}{err_text}")),
        )
    } else if unknown > 0 || delivered == 0 {
        (
            State::Submitted,
            "unknown",
            Some(format!("receipt: outcome unknown{err_text}")),
        )
    } else {
        (State::Delivered, "delivered", None)
    })
}
