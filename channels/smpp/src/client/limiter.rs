//! The bind's pace: a token bucket over every submit_sm, and a pause gate the whole bind waits
//! at after the SMSC says it is throttled or its queue is full.
//!
//! A sender under the limit takes a token and goes on without sleeping. A pause makes every
//! sender wait until it ends, then the bucket starts empty, so sending resumes at the
//! configured rate rather than in a burst.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct Limiter {
    state: Mutex<State>,
}

struct State {
    /// Tokens per second; `None` for no rate limit (the pause gate still applies).
    rate: Option<f64>,
    /// Bucket size: one second's worth of tokens.
    capacity: f64,
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
}

impl Limiter {
    pub(crate) fn new(max_tps: Option<u32>) -> Self {
        let rate = max_tps.map(|t| f64::from(t.max(1)));
        let capacity = rate.unwrap_or(1.0);
        Limiter {
            state: Mutex::new(State {
                rate,
                capacity,
                tokens: capacity,
                last: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// Change the rate while senders use the bucket (`None`: no limit). The bucket keeps
    /// the tokens it holds up to the new capacity, so a lower rate takes effect at once.
    pub(crate) fn set_rate(&self, max_tps: Option<u32>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(rate) = s.rate
            && now > s.last
        {
            // Credit what the old rate earned so far before switching.
            let earned = (now - s.last).as_secs_f64() * rate;
            s.tokens = (s.tokens + earned).min(s.capacity);
            s.last = now;
        } else if s.rate.is_none() {
            s.last = now.max(s.last);
        }
        let rate = max_tps.map(|t| f64::from(t.max(1)));
        s.rate = rate;
        s.capacity = rate.unwrap_or(1.0);
        s.tokens = s.tokens.min(s.capacity);
    }

    /// Wait for permission to write one submit_sm.
    pub(crate) async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                s.try_take(Instant::now())
            };
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Make every sender of the bind wait `pause` from now (extending a pause in progress).
    pub(crate) fn pause(&self, pause: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + pause;
        if s.paused_until.is_none_or(|p| p < until) {
            s.paused_until = Some(until);
        }
        // Start empty after the pause: resume at the rate, not with a burst.
        s.tokens = 0.0;
        s.last = s.paused_until.unwrap_or(until);
    }

    /// Whether a pause is in force now.
    #[cfg(test)]
    pub(crate) fn is_paused(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.paused_until.is_some_and(|p| p > Instant::now())
    }
}

impl State {
    /// Take a token, or say how long to wait before trying again.
    fn try_take(&mut self, now: Instant) -> Option<Duration> {
        if let Some(until) = self.paused_until {
            if until > now {
                return Some(until - now);
            }
            self.paused_until = None;
        }
        let rate = self.rate?;
        if now > self.last {
            let earned = (now - self.last).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(self.capacity);
            self.last = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            let missing = 1.0 - self.tokens;
            Some(Duration::from_secs_f64(missing / rate).max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn under_the_limit_nobody_sleeps() {
        let l = Limiter::new(Some(50));
        let start = Instant::now();
        for _ in 0..50 {
            l.acquire().await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a full bucket must not sleep"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_limit_runs_at_the_rate() {
        let l = Limiter::new(Some(10));
        let start = Instant::now();
        for _ in 0..30 {
            l.acquire().await;
        }
        // 10 from the full bucket, 20 more at 10/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took <= Duration::from_millis(2100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_is_shared_by_concurrent_senders() {
        let l = std::sync::Arc::new(Limiter::new(Some(20)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..15 {
                    l.acquire().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 60 tokens: 20 at once, 40 at 20/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took <= Duration::from_millis(2100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_everyone_then_resumes_at_the_rate() {
        let l = Limiter::new(Some(100));
        l.acquire().await;
        l.pause(Duration::from_secs(1));
        assert!(l.is_paused());
        let start = Instant::now();
        l.acquire().await;
        let first = start.elapsed();
        assert!(first >= Duration::from_millis(1000), "{first:?}");
        assert!(first <= Duration::from_millis(1020), "{first:?}");
        assert!(!l.is_paused());
        // Empty after the pause: 10 more take about 0.1 s, not zero.
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_the_next_sends() {
        let l = Limiter::new(Some(1000));
        l.acquire().await;
        l.set_rate(Some(2));
        // The bucket shrank to 2 tokens: the first two go at once, four more take 2 s.
        let start = Instant::now();
        for _ in 0..6 {
            l.acquire().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took <= Duration::from_millis(2100), "{took:?}");
        // Raised again, and then lifted: no more sleeping beyond the new bucket.
        l.set_rate(Some(100));
        tokio::time::advance(Duration::from_secs(1)).await;
        let start = Instant::now();
        for _ in 0..100 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.set_rate(None);
        for _ in 0..10_000 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // From unlimited back to a rate: one second's worth at most, then the rate.
        l.set_rate(Some(5));
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(990),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_only_the_pause_applies() {
        let l = Limiter::new(None);
        let start = Instant::now();
        for _ in 0..1000 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.pause(Duration::from_millis(300));
        l.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
