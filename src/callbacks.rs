//! Signed status callbacks: the sender of the `callbacks` outbox.
//!
//! Database triggers write a `pending` row in the same transaction as each state change of
//! a delivery or voucher that has a `callback_url`. [`run`] polls for rows that are due,
//! POSTs each one to its URL, signed with its client's callback secret, and records the
//! outcome through the store's writer:
//!
//! - a 2xx answer: `sent`;
//! - anything else (another status, a connection error, a timeout): `attempts + 1`, a short
//!   description in `last_error` (never the answer's body) and the next attempt after an
//!   exponential backoff; once `max_attempts` is reached, `abandoned`;
//! - a client without a callback secret: `abandoned` at once, nothing is sent.
//!
//! Headers of every POST:
//!
//! - `Content-Type: application/json`
//! - `Idempotency-Key` and `Pinpost-Event-Id`: the callback id, the same on every retry;
//! - `Pinpost-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`
//!   ([`sign`]; receivers check it with [`verify`]).
//!
//! A callback is in at most one POST at a time: the ids in flight are kept out of the query
//! for due rows until their outcome has been committed. Delivery is at least once (a
//! receiver deduplicates by `Idempotency-Key`): a POST that reached the receiver but whose
//! outcome was not committed, say because the process stopped, is sent again later.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use rusqlite::params;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CallbacksConfig, Config};
use crate::store::{Store, StoreError};
use crate::{RunError, now_ms};

type HmacSha256 = Hmac<Sha256>;

/// Due rows read in one query.
const BATCH: usize = 64;
/// Shortest callback secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;
/// `last_error` of a callback whose client has no secret to sign with.
const NO_SECRET: &str = "no callback secret for this client";

/// The `Pinpost-Signature` header value for `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<lowercase hex HMAC-SHA256(secret, "<timestamp>." + body)>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("any key length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// Check a `Pinpost-Signature` header against `body`: its `t` must be within
/// `tolerance_secs` of `now` (Unix seconds) and one of its `v1` values must be the
/// HMAC-SHA256 of `"<t>." + body` under `secret` (compared in constant time). Unknown
/// fields are ignored, so that a header may carry signatures of other schemes too.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance_secs: i64) -> bool {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                if timestamp.is_some() {
                    return false;
                }
                match v.parse::<i64>() {
                    Ok(t) => timestamp = Some(t),
                    Err(_) => return false,
                }
            }
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if now.abs_diff(t) > tolerance_secs.max(0).unsigned_abs() {
        return false;
    }
    candidates.into_iter().any(|v| {
        let mut expected = [0u8; 32];
        if hex::decode_to_slice(v, &mut expected).is_err() {
            return false;
        }
        let mut m = <HmacSha256 as Mac>::new_from_slice(secret).expect("any key length");
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        m.verify_slice(&expected).is_ok()
    })
}

/// The callback secrets as the sender sees them: replaced as a whole when the
/// configuration is reloaded.
pub type SharedSecrets = Arc<arc_swap::ArcSwap<Secrets>>;

/// The callback secrets by client (API token name).
#[derive(Default)]
pub struct Secrets {
    by_client: HashMap<String, SecretString>,
}

impl Secrets {
    /// Read the `callback_secret_file` of every token that has one. The key is the file's
    /// content without surrounding whitespace, at least 16 bytes.
    pub fn load(config: &Config) -> Result<Secrets, RunError> {
        let mut out = Secrets::default();
        for t in &config.api.tokens {
            if let Some(path) = &t.callback_secret_file {
                let secret = read_secret(path).map_err(|message| RunError::Token {
                    name: t.name.clone(),
                    message,
                })?;
                out.insert(&t.name, secret);
            }
        }
        Ok(out)
    }

    pub fn insert(&mut self, client: &str, secret: SecretString) {
        self.by_client.insert(client.to_owned(), secret);
    }

    pub fn get(&self, client: &str) -> Option<&SecretString> {
        self.by_client.get(client)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut clients: Vec<&str> = self.by_client.keys().map(String::as_str).collect();
        clients.sort_unstable();
        f.debug_struct("Secrets")
            .field("clients", &clients)
            .finish()
    }
}

fn read_secret(path: &Path) -> Result<SecretString, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("callback_secret_file {}: {e}", path.display()))?,
    );
    let secret = text.trim();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "callback_secret_file {}: a callback secret needs at least {MIN_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    Ok(SecretString::from(secret.to_owned()))
}

/// The pause before the next attempt of a callback that has failed `attempts` times
/// (1 or more): `backoff_min * 2^(attempts - 1)`, capped at `backoff_max`, then +-20 %
/// jitter.
pub fn backoff(cfg: &CallbacksConfig, attempts: u32) -> Duration {
    backoff_base(cfg, attempts).mul_f64(rand::rng().random_range(0.8..=1.2))
}

fn backoff_base(cfg: &CallbacksConfig, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(40);
    let base = cfg.backoff_min.as_secs_f64() * 2f64.powi(doublings as i32);
    Duration::from_secs_f64(base.min(cfg.backoff_max.as_secs_f64()))
}

/// One due row of the outbox.
struct Due {
    id: String,
    client: String,
    url: String,
    body: String,
    attempts: u32,
}

/// How a callback's attempt ended.
enum Outcome {
    Sent,
    Failed(String),
    NoSecret,
}

/// Everything a POST needs, shared by the tasks.
struct Sender {
    store: Store,
    cfg: CallbacksConfig,
    secrets: SharedSecrets,
    agent: ureq::Agent,
    /// Ids whose POST or outcome is under way; kept out of the query for due rows.
    in_flight: Mutex<HashSet<String>>,
}

/// Send due callbacks until `shutdown`; then take no new rows and wait for the POSTs in
/// flight (each bounded by `cfg.timeout`) and their outcomes to be recorded.
pub async fn run(
    store: Store,
    cfg: CallbacksConfig,
    secrets: SharedSecrets,
    shutdown: CancellationToken,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(cfg.timeout))
        .user_agent(concat!("pinpost/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let poll = cfg.poll_interval;
    let sender = Arc::new(Sender {
        store,
        cfg,
        secrets,
        agent,
        in_flight: Mutex::new(HashSet::new()),
    });
    let tasks = TaskTracker::new();
    tracing::info!(
        max_in_flight = sender.cfg.max_in_flight,
        "callback sender started"
    );
    loop {
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore open"),
            _ = shutdown.cancelled() => break,
        };
        let exclude: Vec<String> = sender
            .in_flight
            .lock()
            .expect("in-flight lock")
            .iter()
            .cloned()
            .collect();
        let rows = match sender.store.read(move |c| due(c, now_ms(), &exclude)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "cannot read due callbacks");
                drop(first);
                tokio::select! {
                    _ = tokio::time::sleep(poll.max(Duration::from_secs(1))) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let full = rows.len() == BATCH;
        let mut spare = Some(first);
        let mut started = 0usize;
        let mut exhausted = false;
        for row in rows {
            let permit = match spare.take() {
                Some(p) => p,
                None => match permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        exhausted = true;
                        break;
                    }
                },
            };
            if !sender
                .in_flight
                .lock()
                .expect("in-flight lock")
                .insert(row.id.clone())
            {
                spare = Some(permit);
                continue;
            }
            started += 1;
            let sender = sender.clone();
            tasks.spawn(async move {
                sender.attempt(row).await;
                drop(permit);
            });
        }
        drop(spare);
        // More may be due when the batch was full or the permits ran out: then look again
        // at once (waiting for a permit first); otherwise nothing is due until the next poll.
        if started == 0 || (!full && !exhausted) {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }
    tasks.close();
    let in_flight = tasks.len();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            "callback sender stopping: waiting for POSTs in flight"
        );
    }
    tasks.wait().await;
    tracing::info!("callback sender stopped");
}

/// Pending callbacks due at `now` (milliseconds), earliest first, without `exclude`.
fn due(c: &rusqlite::Connection, now: i64, exclude: &[String]) -> Result<Vec<Due>, StoreError> {
    let exclude = serde_json::to_string(exclude).expect("a list of strings");
    let mut st = c.prepare_cached(
        "SELECT id, client, url, body, attempts FROM callbacks
         WHERE state = 'pending' AND next_attempt_at <= ?1
           AND id NOT IN (SELECT value FROM json_each(?2))
         ORDER BY next_attempt_at LIMIT ?3",
    )?;
    let rows = st.query_map(params![now, exclude, BATCH as i64], |r| {
        Ok(Due {
            id: r.get(0)?,
            client: r.get(1)?,
            url: r.get(2)?,
            body: r.get(3)?,
            attempts: r.get::<_, i64>(4)?.clamp(0, u32::MAX as i64) as u32,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Sender {
    /// POST one callback and record the outcome. The id leaves `in_flight` only once the
    /// outcome is committed, so the next query for due rows sees the new state; when it
    /// cannot be recorded, the id stays out until the next start.
    async fn attempt(self: Arc<Self>, row: Due) {
        let key = self
            .secrets
            .load()
            .get(&row.client)
            .map(|secret| zeroize::Zeroizing::new(secret.expose_secret().as_bytes().to_vec()));
        let outcome = match key {
            None => Outcome::NoSecret,
            Some(key) => {
                let this = self.clone();
                let (id, url, body) = (row.id.clone(), row.url.clone(), row.body.clone());
                tokio::task::spawn_blocking(move || this.post(&key, &id, &url, &body))
                    .await
                    .unwrap_or_else(|_| Outcome::Failed("the POST task failed".into()))
            }
        };
        match self.record(&row, outcome).await {
            Ok(()) => {
                self.in_flight
                    .lock()
                    .expect("in-flight lock")
                    .remove(&row.id);
            }
            Err(e) => tracing::error!(
                callback_id = %row.id, error = %e,
                "cannot record a callback outcome; it is retried after the next start"
            ),
        }
    }

    /// One signed POST (blocking).
    fn post(&self, secret: &[u8], id: &str, url: &str, body: &str) -> Outcome {
        let timestamp = now_ms().div_euclid(1000);
        let signature = sign(secret, timestamp, body.as_bytes());
        let result = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", id)
            .header("Pinpost-Event-Id", id)
            .header("Pinpost-Signature", &signature)
            .send(body.as_bytes());
        match result {
            Ok(resp) if resp.status().is_success() => Outcome::Sent,
            Ok(resp) => Outcome::Failed(format!("HTTP {}", resp.status().as_u16())),
            Err(e) => Outcome::Failed(describe(&e)),
        }
    }

    async fn record(&self, row: &Due, outcome: Outcome) -> Result<(), StoreError> {
        let now = now_ms();
        let id = row.id.clone();
        let attempts = row.attempts + 1;
        match outcome {
            Outcome::Sent => {
                tracing::debug!(callback_id = %row.id, client = %row.client, attempt = attempts, "callback sent");
                self.store
                    .write(move |c| {
                        c.prepare_cached(
                            "UPDATE callbacks SET state = 'sent', attempts = ?2, updated_at = ?3
                             WHERE id = ?1 AND state = 'pending'",
                        )?
                        .execute(params![id, attempts, now])?;
                        Ok(())
                    })
                    .await
            }
            Outcome::NoSecret => {
                tracing::warn!(callback_id = %row.id, client = %row.client, "callback abandoned: {NO_SECRET}");
                self.store
                    .write(move |c| {
                        c.prepare_cached(
                            "UPDATE callbacks SET state = 'abandoned', last_error = ?2,
                                 updated_at = ?3
                             WHERE id = ?1 AND state = 'pending'",
                        )?
                        .execute(params![id, NO_SECRET, now])?;
                        Ok(())
                    })
                    .await
            }
            Outcome::Failed(error) => {
                let abandoned = attempts >= self.cfg.max_attempts;
                let next = now + backoff(&self.cfg, attempts).as_millis() as i64;
                if abandoned {
                    tracing::warn!(
                        callback_id = %row.id, client = %row.client, attempts, error = %error,
                        "callback abandoned: no attempts left"
                    );
                } else {
                    tracing::info!(
                        callback_id = %row.id, client = %row.client, attempt = attempts,
                        error = %error, "callback failed; will retry"
                    );
                }
                let state = if abandoned { "abandoned" } else { "pending" };
                self.store
                    .write(move |c| {
                        c.prepare_cached(
                            "UPDATE callbacks SET state = ?2, attempts = ?3, last_error = ?4,
                                 next_attempt_at = ?5, updated_at = ?6
                             WHERE id = ?1 AND state = 'pending'",
                        )?
                        .execute(params![id, state, attempts, error, next, now])?;
                        Ok(())
                    })
                    .await
            }
        }
    }
}

/// A short description of a failed POST, in pinpost's words: the class of the error, not
/// text from the peer.
fn describe(e: &ureq::Error) -> String {
    use ureq::Error;
    match e {
        Error::StatusCode(code) => format!("HTTP {code}"),
        Error::Timeout(_) => "timeout".into(),
        Error::HostNotFound => "host not found".into(),
        Error::ConnectionFailed => "connection failed".into(),
        Error::Io(io) => format!("connection error: {}", io.kind()),
        Error::BadUri(_) | Error::Http(_) => "invalid callback URL".into(),
        Error::TooManyRedirects | Error::RedirectFailed => "redirect not followed".into(),
        Error::Protocol(_) => "HTTP protocol error".into(),
        Error::Tls(_) | Error::Pem(_) | Error::Rustls(_) => "TLS error".into(),
        Error::TlsRequired => "TLS is not available for https".into(),
        Error::ConnectProxyFailed(_) | Error::InvalidProxyUrl => "proxy error".into(),
        _ => "request failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode};

    use super::*;
    use crate::config::Durability;
    use crate::store::{CancelOutcome, EnqueueOutcome, NewDelivery, PlanSettings};

    const SECRET: &[u8] = b"whsec_0123456789abcdef";
    const VECTOR_T: i64 = 1_767_225_600;
    const VECTOR_BODY: &str =
        r#"{"type":"delivery.state","delivery":{"id":"d1","state":"delivered"}}"#;
    /// Python: hmac.new(SECRET, b"1767225600." + VECTOR_BODY, hashlib.sha256).hexdigest()
    const VECTOR_MAC: &str = "418bbc88b0e99f75da47ac70d138d5dd8331a699c5364b04222c7b53e5f54239";

    #[test]
    fn signature_matches_a_known_vector() {
        assert_eq!(
            sign(SECRET, VECTOR_T, VECTOR_BODY.as_bytes()),
            format!("t={VECTOR_T},v1={VECTOR_MAC}")
        );
    }

    #[test]
    fn verify_accepts_and_rejects() {
        let body = VECTOR_BODY.as_bytes();
        let h = sign(SECRET, VECTOR_T, body);
        assert!(verify(SECRET, &h, body, VECTOR_T, 300));
        assert!(verify(SECRET, &h, body, VECTOR_T + 300, 300));
        assert!(verify(SECRET, &h, body, VECTOR_T - 300, 300));
        assert!(!verify(SECRET, &h, body, VECTOR_T + 301, 300));
        assert!(!verify(SECRET, &h, b"{}", VECTOR_T, 300));
        assert!(!verify(b"another secret of 16+", &h, body, VECTOR_T, 300));
        let other_t = h.replace(&format!("t={VECTOR_T}"), &format!("t={}", VECTOR_T + 1));
        assert!(!verify(SECRET, &other_t, body, VECTOR_T, 300));
        let rotated = format!("t={VECTOR_T},v1={},v1={VECTOR_MAC}", "00".repeat(32));
        assert!(verify(SECRET, &rotated, body, VECTOR_T, 300));
        let upper = format!("t={VECTOR_T}, v1={}, v0=x", VECTOR_MAC.to_uppercase());
        assert!(verify(SECRET, &upper, body, VECTOR_T, 300));
        for bad in [
            "",
            "v1=00",
            &format!("v1={VECTOR_MAC}"),
            &format!("t=x,v1={VECTOR_MAC}"),
            &format!("t={VECTOR_T},v1=zz"),
            &format!("t={VECTOR_T},t={VECTOR_T},v1={VECTOR_MAC}"),
        ] {
            assert!(!verify(SECRET, bad, body, VECTOR_T, 300), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let cfg = CallbacksConfig::default();
        let base: Vec<Duration> = (1..=12).map(|a| backoff_base(&cfg, a)).collect();
        assert_eq!(base[0], Duration::from_secs(1));
        assert_eq!(base[1], Duration::from_secs(2));
        assert_eq!(base[2], Duration::from_secs(4));
        assert_eq!(base[9], Duration::from_secs(512));
        assert_eq!(base[10], Duration::from_secs(600));
        assert_eq!(base[11], Duration::from_secs(600));
        assert_eq!(backoff_base(&cfg, 0), Duration::from_secs(1));
        assert_eq!(backoff_base(&cfg, u32::MAX), Duration::from_secs(600));
        for attempts in [1, 3, 12] {
            let b = backoff_base(&cfg, attempts);
            for _ in 0..100 {
                let j = backoff(&cfg, attempts);
                assert!(j >= b.mul_f64(0.8) && j <= b.mul_f64(1.2), "{j:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn short_or_missing_secret_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.secret");
        std::fs::write(&short, "  0123456789abcde \n").unwrap();
        let e = read_secret(&short).unwrap_err();
        assert!(e.contains("short.secret") && e.contains("16 bytes"), "{e}");
        let missing = dir.path().join("missing.secret");
        let e = read_secret(&missing).unwrap_err();
        assert!(e.contains("missing.secret"), "{e}");
        let ok = dir.path().join("ok.secret");
        std::fs::write(&ok, "0123456789abcdef\n").unwrap();
        assert_eq!(
            read_secret(&ok).unwrap().expose_secret(),
            "0123456789abcdef"
        );
        let mut s = Secrets::default();
        s.insert("billing", read_secret(&ok).unwrap());
        let shown = format!("{s:?}");
        assert!(
            shown.contains("billing") && !shown.contains("0123"),
            "{shown}"
        );
    }

    async fn open_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let plans = PlanSettings {
            routes: [("sms".to_owned(), "sms".to_owned())].into(),
            default_step_timeout_ms: 1000,
        };
        let store = Store::open(&dir.path().join("t.db"), Durability::Full, plans).unwrap();
        (dir, store)
    }

    async fn insert_callback(store: &Store, id: &str, client: &str, url: &str, body: &str) {
        let (id, client, url, body) = (
            id.to_owned(),
            client.to_owned(),
            url.to_owned(),
            body.to_owned(),
        );
        let now = now_ms();
        store
            .write(move |c| {
                c.execute(
                    "INSERT INTO callbacks (id, client, url, body, state, next_attempt_at,
                         created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5)",
                    params![id, client, url, body, now],
                )?;
                Ok(())
            })
            .await
            .unwrap();
    }

    /// (state, attempts, last_error) of a callback.
    async fn row(store: &Store, id: &str) -> (String, u32, Option<String>) {
        let id = id.to_owned();
        store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT state, attempts, last_error FROM callbacks WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?)
            })
            .await
            .unwrap()
    }

    /// Wait until the callback has left `pending`; the bound only guards against a hang.
    async fn settled(store: &Store, id: &str) -> (String, u32, Option<String>) {
        for _ in 0..6000 {
            let r = row(store, id).await;
            if r.0 != "pending" {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("callback {id} is still pending");
    }

    #[derive(Default)]
    struct Seen {
        requests: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
        calls: AtomicUsize,
    }

    /// A receiver on 127.0.0.1 that answers 500 to the first `failures` requests, then 200.
    async fn receiver(failures: usize) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let state = seen.clone();
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = state.clone();
                async move {
                    let n = seen.calls.fetch_add(1, Ordering::SeqCst);
                    seen.requests.lock().unwrap().push((headers, body.to_vec()));
                    if n < failures {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/cb"), seen)
    }

    fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
        h.get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn sender_signs_retries_and_gives_up() {
        let (_dir, store) = open_store().await;
        let (flaky_url, flaky) = receiver(1).await;
        let (down_url, down) = receiver(usize::MAX).await;
        let body = r#"{"type":"delivery.state","delivery":{"id":"d1","state":"delivered"}}"#;
        insert_callback(&store, "cb-flaky", "billing", &flaky_url, body).await;
        insert_callback(&store, "cb-down", "billing", &down_url, body).await;
        insert_callback(&store, "cb-nosecret", "stranger", &flaky_url, body).await;

        let cfg = CallbacksConfig {
            max_attempts: 3,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            timeout: Duration::from_secs(10),
            max_in_flight: 4,
            poll_interval: Duration::from_millis(5),
        };
        let mut secrets = Secrets::default();
        secrets.insert(
            "billing",
            SecretString::from(String::from_utf8(SECRET.to_vec()).unwrap()),
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            cfg,
            Arc::new(arc_swap::ArcSwap::from_pointee(secrets)),
            shutdown.clone(),
        ));

        let (state, attempts, last_error) = settled(&store, "cb-flaky").await;
        assert_eq!(state, "sent");
        assert_eq!(attempts, 2);
        assert_eq!(last_error.as_deref(), Some("HTTP 500"));

        let (state, attempts, last_error) = settled(&store, "cb-down").await;
        assert_eq!(state, "abandoned");
        assert_eq!(attempts, 3);
        assert_eq!(last_error.as_deref(), Some("HTTP 500"));

        let (state, attempts, last_error) = settled(&store, "cb-nosecret").await;
        assert_eq!(state, "abandoned");
        assert_eq!(attempts, 0);
        assert_eq!(last_error.as_deref(), Some(NO_SECRET));

        shutdown.cancel();
        task.await.unwrap();

        let now = now_ms() / 1000;
        let requests = flaky.requests.lock().unwrap();
        assert_eq!(requests.len(), 2, "no callback is sent after its 2xx");
        for (headers, got) in requests.iter() {
            assert_eq!(got.as_slice(), body.as_bytes());
            assert_eq!(header(headers, "content-type"), "application/json");
            assert_eq!(header(headers, "idempotency-key"), "cb-flaky");
            assert_eq!(header(headers, "pinpost-event-id"), "cb-flaky");
            let sig = header(headers, "pinpost-signature");
            assert!(verify(SECRET, sig, got, now, 300), "{sig}");
            assert!(!verify(b"not the secret of billing", sig, got, now, 300));
        }
        assert_eq!(down.requests.lock().unwrap().len(), 3);
        for (headers, got) in down.requests.lock().unwrap().iter() {
            assert_eq!(header(headers, "idempotency-key"), "cb-down");
            assert!(verify(
                SECRET,
                header(headers, "pinpost-signature"),
                got,
                now,
                300
            ));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_callback_is_posted_once_within_the_in_flight_bound() {
        #[derive(Default)]
        struct Counts {
            now: AtomicUsize,
            peak: AtomicUsize,
            ids: Mutex<Vec<String>>,
        }
        let counts = Arc::new(Counts::default());
        let state = counts.clone();
        let app = axum::Router::new().route(
            "/cb",
            axum::routing::post(move |headers: HeaderMap| {
                let c = state.clone();
                async move {
                    let n = c.now.fetch_add(1, Ordering::SeqCst) + 1;
                    c.peak.fetch_max(n, Ordering::SeqCst);
                    c.ids
                        .lock()
                        .unwrap()
                        .push(header(&headers, "idempotency-key").to_owned());
                    // Holds the POST open so that others overlap with it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    c.now.fetch_sub(1, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/cb", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let (_dir, store) = open_store().await;
        let ids: Vec<String> = (0..20).map(|i| format!("cb-{i:02}")).collect();
        for id in &ids {
            insert_callback(&store, id, "billing", &url, "{}").await;
        }
        let cfg = CallbacksConfig {
            max_in_flight: 3,
            poll_interval: Duration::from_millis(1),
            ..CallbacksConfig::default()
        };
        let mut secrets = Secrets::default();
        secrets.insert("billing", SecretString::from("0123456789abcdef".to_owned()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            store.clone(),
            cfg,
            Arc::new(arc_swap::ArcSwap::from_pointee(secrets)),
            shutdown.clone(),
        ));
        for id in &ids {
            assert_eq!(settled(&store, id).await, ("sent".to_owned(), 1, None));
        }
        shutdown.cancel();
        task.await.unwrap();
        let mut seen = counts.ids.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, ids, "every callback exactly once");
        let peak = counts.peak.load(Ordering::SeqCst);
        assert!((1..=3).contains(&peak), "{peak} POSTs at once");
    }

    #[tokio::test]
    async fn a_delivery_state_change_queues_a_callback() {
        let (_dir, store) = open_store().await;
        let now = now_ms();
        let new = NewDelivery {
            id: "dlv-1".into(),
            msisdn: "+819012345678".into(),
            channel: "sms".into(),
            pin_ct: vec![1, 2, 3],
            amount_value: None,
            amount_currency: None,
            payee: None,
            expires_at: None,
            now,
            client: "billing".into(),
            idempotency_key: "k1".into(),
            fingerprint: [7; 32],
            callback_url: Some("https://billing.example.net/cb".into()),
        };
        assert_eq!(
            store.enqueue(new).await.unwrap(),
            EnqueueOutcome::Created { id: "dlv-1".into() }
        );
        assert_eq!(
            store.cancel("dlv-1", now + 1).await.unwrap(),
            CancelOutcome::Cancelled
        );
        let rows: Vec<(String, String, String, String)> = store
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT client, url, state, body FROM callbacks ORDER BY created_at",
                )?;
                let rows =
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        let cancelled: Vec<serde_json::Value> = rows
            .iter()
            .map(|(client, url, state, body)| {
                assert_eq!(client, "billing");
                assert_eq!(url, "https://billing.example.net/cb");
                assert_eq!(state, "pending");
                serde_json::from_str::<serde_json::Value>(body).unwrap()
            })
            .filter(|b| b["delivery"]["state"] == "cancelled")
            .collect();
        assert_eq!(cancelled.len(), 1, "{rows:?}");
        let b = &cancelled[0];
        assert_eq!(b["type"], "delivery.state");
        assert_eq!(b["delivery"]["id"], "dlv-1");
        assert_eq!(b["delivery"]["final"], true);
        assert!(b.get("pin").is_none() && b["delivery"].get("pin").is_none());
    }
}
