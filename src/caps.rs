//! Fraud and cost caps against SMS pumping, decided before a send is submitted.
//!
//! Two kinds of limit apply to a send to one MSISDN:
//! - per-MSISDN caps: sends to that number in any rolling hour and day;
//! - destination rules by E.164 prefix or country: allow, block, or cap (a budget shared by
//!   every send that matches the rule). The most specific rule wins: the longest matching
//!   prefix, else the rule for the number's country; a destination that matches no rule
//!   gets `default_action`.
//!
//! Counters are kept in memory as sparse lists of (minute, count), so a number that was sent
//! to a few times costs a few entries. A rolling hour is the last 60 minute buckets including
//! the current one, a day the last 1440. Time is always passed in (`now_ms`, milliseconds
//! since the Unix epoch), so decisions are reproducible.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use phonenumber::Mode;
use serde::{Deserialize, Serialize};

/// Minutes in a rolling hour.
const HOUR: u32 = 60;
/// Minutes in a rolling day.
const DAY: u32 = 24 * 60;
const MINUTE_MS: i64 = 60_000;

/// `[caps]` in the config file. All limits off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsConfig {
    /// Sends per destination MSISDN in any rolling hour (None: no cap).
    #[serde(default)]
    pub per_msisdn_hour: Option<u32>,
    /// Sends per destination MSISDN in any rolling day (None: no cap).
    #[serde(default)]
    pub per_msisdn_day: Option<u32>,
    /// What happens to a destination that matches no rule: "allow" (default) or "block".
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Rules by E.164 prefix ("+8190") or country ("JP", ISO 3166 alpha-2, from the
    /// number's region per the `phonenumber` crate). Most specific wins: the longest
    /// matching prefix rule, else a country rule.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationRule>,
}

/// What happens to a destination that matches no rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Allow,
    Block,
}

/// One `[[caps.destination]]`: exactly one of `prefix` and `country`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationRule {
    /// An E.164 prefix: "+" and digits, e.g. "+8190".
    #[serde(default)]
    pub prefix: Option<String>,
    /// An ISO 3166 alpha-2 region code, e.g. "JP".
    #[serde(default)]
    pub country: Option<String>,
    pub action: RuleAction,
    /// Sends matching this rule in any rolling hour (only with `action = "cap"`).
    #[serde(default)]
    pub per_hour: Option<u32>,
    /// Sends matching this rule in any rolling day (only with `action = "cap"`).
    #[serde(default)]
    pub per_day: Option<u32>,
}

/// What a destination rule does to the sends it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Sent without the rule's own budget; per-MSISDN caps still apply.
    Allow,
    /// Never sent.
    Block,
    /// Sent while the rule's budget (`per_hour` and/or `per_day`, shared by all sends that
    /// match the rule) and the per-MSISDN caps allow.
    Cap,
}

impl CapsConfig {
    /// Checks serde cannot express. Err((key path like "caps.destination[2].prefix",
    /// message)).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: String, message: &str| Err((key, message.to_owned()));
        if self.per_msisdn_hour == Some(0) {
            return err("caps.per_msisdn_hour".into(), "must be at least 1");
        }
        if self.per_msisdn_day == Some(0) {
            return err("caps.per_msisdn_day".into(), "must be at least 1");
        }
        let mut prefixes = std::collections::HashSet::new();
        let mut countries = std::collections::HashSet::new();
        for (i, r) in self.destinations.iter().enumerate() {
            let src = format!("caps.destination[{i}]");
            match (&r.prefix, &r.country) {
                (Some(p), None) => {
                    let digits = p.strip_prefix('+').unwrap_or("");
                    if !p.starts_with('+')
                        || digits.is_empty()
                        || digits.len() > 15
                        || !digits.bytes().all(|b| b.is_ascii_digit())
                    {
                        return err(
                            format!("{src}.prefix"),
                            "must be \"+\" and 1 to 15 digits, e.g. \"+8190\"",
                        );
                    }
                    if !prefixes.insert(p.as_str()) {
                        return err(format!("{src}.prefix"), "another rule has the same prefix");
                    }
                }
                (None, Some(c)) => {
                    if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                        return err(
                            format!("{src}.country"),
                            "must be two uppercase letters (ISO 3166 alpha-2), e.g. \"JP\"",
                        );
                    }
                    if c.parse::<phonenumber::country::Id>().is_err() {
                        return err(
                            format!("{src}.country"),
                            "is not a region known to the phone number metadata",
                        );
                    }
                    if !countries.insert(c.as_str()) {
                        return err(
                            format!("{src}.country"),
                            "another rule has the same country",
                        );
                    }
                }
                _ => return err(src, "set exactly one of prefix and country"),
            }
            if r.per_hour == Some(0) {
                return err(format!("{src}.per_hour"), "must be at least 1");
            }
            if r.per_day == Some(0) {
                return err(format!("{src}.per_day"), "must be at least 1");
            }
            match r.action {
                RuleAction::Cap => {
                    if r.per_hour.is_none() && r.per_day.is_none() {
                        return err(src, "action \"cap\" needs per_hour and/or per_day");
                    }
                }
                RuleAction::Allow | RuleAction::Block => {
                    let key = if r.per_hour.is_some() {
                        "per_hour"
                    } else if r.per_day.is_some() {
                        "per_day"
                    } else {
                        continue;
                    };
                    return err(
                        format!("{src}.{key}"),
                        "only rules with action \"cap\" take per_hour and per_day",
                    );
                }
            }
        }
        Ok(())
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A block rule or `default_action = "block"`. `rule` describes the rule without the
    /// MSISDN, e.g. "destination prefix +882 is blocked".
    #[error("{rule}")]
    Blocked { rule: String },
    /// Over a cap: seconds until one more send fits (at least 1), and which cap, e.g.
    /// "msisdn per hour" or "prefix +8190 per day".
    #[error("over the {cap} cap; retry in {retry_after_secs} s")]
    Over { retry_after_secs: u64, cap: String },
}

/// A destination rule as `Caps` applies it.
#[derive(Debug)]
struct Rule {
    /// "prefix +8190" or "country JP".
    label: String,
    /// Why a send is denied when the action is block.
    blocked: String,
    action: RuleAction,
    per_hour: Option<u32>,
    per_day: Option<u32>,
}

/// Sends per minute bucket, ascending by minute (minutes since the Unix epoch). Only
/// minutes with sends have an entry.
#[derive(Debug, Default)]
struct Counter {
    buckets: Vec<(u32, u32)>,
}

impl Counter {
    fn add(&mut self, minute: u32) {
        match self.buckets.last_mut() {
            Some(last) if last.0 == minute => last.1 = last.1.saturating_add(1),
            Some(last) if last.0 > minute => {
                match self.buckets.binary_search_by_key(&minute, |b| b.0) {
                    Ok(i) => self.buckets[i].1 = self.buckets[i].1.saturating_add(1),
                    Err(i) => self.buckets.insert(i, (minute, 1)),
                }
            }
            _ => self.buckets.push((minute, 1)),
        }
    }

    /// Take back one send counted in `minute` (nothing if that bucket is gone).
    fn remove(&mut self, minute: u32) {
        if let Ok(i) = self.buckets.binary_search_by_key(&minute, |b| b.0) {
            self.buckets[i].1 -= 1;
            if self.buckets[i].1 == 0 {
                self.buckets.remove(i);
            }
        }
    }

    /// Drop the buckets before `first_kept`.
    fn trim(&mut self, first_kept: u32) {
        let n = self.buckets.partition_point(|b| b.0 < first_kept);
        if n > 0 {
            self.buckets.drain(..n);
        }
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// None when one more send at `now_ms` fits `limit` sends per `window` minutes, else
    /// the seconds until enough sends have left the window for it to fit (at least 1).
    fn over(&self, limit: u32, window: u32, now_ms: i64) -> Option<u64> {
        let first = minute_of(now_ms).saturating_sub(window - 1);
        let inside = &self.buckets[self.buckets.partition_point(|b| b.0 < first)..];
        let total: u64 = inside.iter().map(|b| u64::from(b.1)).sum();
        if total < u64::from(limit) {
            return None;
        }
        let must_leave = total - u64::from(limit) + 1;
        let mut left = 0u64;
        for &(minute, count) in inside {
            left += u64::from(count);
            if left >= must_leave {
                let leaves_ms = (i64::from(minute) + i64::from(window)) * MINUTE_MS;
                return Some(ceil_secs(leaves_ms - now_ms));
            }
        }
        // Only reachable with a zero limit, which nothing ever fits.
        Some(u64::from(window) * 60)
    }
}

/// The minute bucket of a time (minutes since the Unix epoch, clamped to `u32`).
fn minute_of(now_ms: i64) -> u32 {
    now_ms.div_euclid(MINUTE_MS).clamp(0, i64::from(u32::MAX)) as u32
}

fn ceil_secs(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000).max(1)
}

#[derive(Debug, Default)]
struct State {
    /// Per-MSISDN counters by E.164 number (only kept when a per-MSISDN cap is set).
    msisdns: HashMap<String, Counter>,
    /// One counter per destination rule, by rule index (used by cap rules only).
    rules: Vec<Counter>,
}

/// Where a send goes, as the caps see it.
struct Destination {
    /// The per-MSISDN counter key: the E.164 form when the number parses.
    key: String,
    /// The index of the most specific matching rule.
    rule: Option<usize>,
}

/// The caps of a running daemon: configuration plus in-memory counters.
#[derive(Debug)]
pub struct Caps {
    per_msisdn_hour: Option<u32>,
    per_msisdn_day: Option<u32>,
    default_action: DefaultAction,
    rules: Vec<Rule>,
    /// (prefix, rule index), longest prefix first.
    prefixes: Vec<(String, usize)>,
    /// Country code to rule index.
    countries: HashMap<String, usize>,
    state: Mutex<State>,
}

/// A send counted by [`Caps::check`]. Dropping it keeps the send counted; call
/// [`Reservation::release`] when the send did not happen after all.
#[derive(Debug)]
pub struct Reservation<'a> {
    caps: &'a Caps,
    /// The per-MSISDN counter the send was counted in, if any.
    msisdn: Option<String>,
    /// The cap rule whose budget the send was counted in, if any.
    rule: Option<usize>,
    minute: u32,
}

impl Reservation<'_> {
    /// Give the counted send back.
    pub fn release(self) {
        if self.msisdn.is_none() && self.rule.is_none() {
            return;
        }
        let mut state = self.caps.lock();
        if let Some(key) = &self.msisdn
            && let Some(c) = state.msisdns.get_mut(key)
        {
            c.remove(self.minute);
            if c.is_empty() {
                state.msisdns.remove(key);
            }
        }
        if let Some(i) = self.rule {
            state.rules[i].remove(self.minute);
        }
    }
}

impl Caps {
    /// Build from a config that passed [`CapsConfig::validate`]. (Unvalidated rules are
    /// applied leniently: with both prefix and country the prefix is used, with neither
    /// the rule never matches, of duplicates the first wins.)
    pub fn new(cfg: &CapsConfig) -> Caps {
        let mut rules = Vec::with_capacity(cfg.destinations.len());
        let mut prefixes = Vec::new();
        let mut countries = HashMap::new();
        for (i, r) in cfg.destinations.iter().enumerate() {
            let (label, blocked) = match (&r.prefix, &r.country) {
                (Some(p), _) => {
                    prefixes.push((p.clone(), i));
                    (
                        format!("prefix {p}"),
                        format!("destination prefix {p} is blocked"),
                    )
                }
                (None, Some(c)) => {
                    countries.entry(c.clone()).or_insert(i);
                    (format!("country {c}"), format!("country {c} is blocked"))
                }
                (None, None) => (String::new(), String::new()),
            };
            rules.push(Rule {
                label,
                blocked,
                action: r.action,
                per_hour: r.per_hour,
                per_day: r.per_day,
            });
        }
        // Stable: among equal prefixes the first rule stays first.
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let state = State {
            msisdns: HashMap::new(),
            rules: rules.iter().map(|_| Counter::default()).collect(),
        };
        Caps {
            per_msisdn_hour: cfg.per_msisdn_hour,
            per_msisdn_day: cfg.per_msisdn_day,
            default_action: cfg.default_action,
            rules,
            prefixes,
            countries,
            state: Mutex::new(state),
        }
    }

    /// False when no cap and no rule is configured and `default_action` is "allow":
    /// callers skip everything.
    pub fn enabled(&self) -> bool {
        self.counts_msisdns()
            || !self.rules.is_empty()
            || self.default_action == DefaultAction::Block
    }

    /// Decide for one send to `msisdn` (E.164, "+81..."). On Ok the send is counted; the
    /// caller calls [`Reservation::release`] if the send did not happen after all. A denied
    /// check counts nothing.
    pub fn check(&self, msisdn: &str, now_ms: i64) -> Result<Reservation<'_>, Denied> {
        let minute = minute_of(now_ms);
        if !self.enabled() {
            return Ok(Reservation {
                caps: self,
                msisdn: None,
                rule: None,
                minute,
            });
        }
        let dest = self.resolve(msisdn);
        let action = match dest.rule {
            Some(i) => self.rules[i].action,
            None => match self.default_action {
                DefaultAction::Allow => RuleAction::Allow,
                DefaultAction::Block => RuleAction::Block,
            },
        };
        let capped_rule = match (action, dest.rule) {
            (RuleAction::Block, Some(i)) => {
                return Err(Denied::Blocked {
                    rule: self.rules[i].blocked.clone(),
                });
            }
            (RuleAction::Block, None) => {
                return Err(Denied::Blocked {
                    rule: "destinations outside the allow list are blocked".into(),
                });
            }
            (RuleAction::Cap, Some(i)) => Some(i),
            _ => None,
        };
        let counts_msisdn = self.counts_msisdns();

        let mut state = self.lock();
        // (retry_after_secs, which cap); the longest wait wins, since all must fit.
        let mut worst: Option<(u64, String)> = None;
        let mut consider = |secs: Option<u64>, cap: &dyn Fn() -> String| {
            if let Some(s) = secs
                && worst.as_ref().is_none_or(|(w, _)| s > *w)
            {
                worst = Some((s, cap()));
            }
        };
        if counts_msisdn && let Some(c) = state.msisdns.get_mut(&dest.key) {
            c.trim(minute.saturating_sub(self.msisdn_retention() - 1));
            if let Some(limit) = self.per_msisdn_hour {
                consider(c.over(limit, HOUR, now_ms), &|| "msisdn per hour".into());
            }
            if let Some(limit) = self.per_msisdn_day {
                consider(c.over(limit, DAY, now_ms), &|| "msisdn per day".into());
            }
        }
        if let Some(i) = capped_rule {
            let rule = &self.rules[i];
            let c = &mut state.rules[i];
            c.trim(minute.saturating_sub(rule_retention(rule) - 1));
            if let Some(limit) = rule.per_hour {
                consider(c.over(limit, HOUR, now_ms), &|| {
                    format!("{} per hour", rule.label)
                });
            }
            if let Some(limit) = rule.per_day {
                consider(c.over(limit, DAY, now_ms), &|| {
                    format!("{} per day", rule.label)
                });
            }
        }
        if let Some((retry_after_secs, cap)) = worst {
            return Err(Denied::Over {
                retry_after_secs,
                cap,
            });
        }
        if counts_msisdn {
            state
                .msisdns
                .entry(dest.key.clone())
                .or_default()
                .add(minute);
        }
        if let Some(i) = capped_rule {
            state.rules[i].add(minute);
        }
        drop(state);
        Ok(Reservation {
            caps: self,
            msisdn: counts_msisdn.then_some(dest.key),
            rule: capped_rule,
            minute,
        })
    }

    /// Count sends that happened before a restart (msisdn, created_at_ms), e.g. the last
    /// day's deliveries read from the database at start-up. They count against the caps but
    /// are never denied, whatever the rules say.
    pub fn seed(&self, sends: impl IntoIterator<Item = (String, i64)>) {
        if !self.enabled() {
            return;
        }
        let counts_msisdn = self.counts_msisdns();
        // Numbers repeat; parse each once.
        let mut resolved: HashMap<String, (String, Option<usize>)> = HashMap::new();
        for (msisdn, at_ms) in sends {
            let minute = minute_of(at_ms);
            let (key, rule) = match resolved.get(&msisdn) {
                Some((k, r)) => (k.clone(), *r),
                None => {
                    let d = self.resolve(&msisdn);
                    let rule = d.rule.filter(|&i| self.rules[i].action == RuleAction::Cap);
                    resolved.insert(msisdn, (d.key.clone(), rule));
                    (d.key, rule)
                }
            };
            let mut state = self.lock();
            if counts_msisdn {
                state.msisdns.entry(key).or_default().add(minute);
            }
            if let Some(i) = rule {
                state.rules[i].add(minute);
            }
        }
    }

    /// Forget counts that no cap looks at any more (older than a day at most), and numbers
    /// left with no count.
    pub fn prune(&self, now_ms: i64) {
        let minute = minute_of(now_ms);
        let first_msisdn = minute.saturating_sub(self.msisdn_retention() - 1);
        let mut state = self.lock();
        state.msisdns.retain(|_, c| {
            c.trim(first_msisdn);
            if c.buckets.capacity() > 2 * c.buckets.len() + 4 {
                c.buckets.shrink_to_fit();
            }
            !c.is_empty()
        });
        for (rule, c) in self.rules.iter().zip(state.rules.iter_mut()) {
            c.trim(minute.saturating_sub(rule_retention(rule) - 1));
        }
    }

    fn counts_msisdns(&self) -> bool {
        self.per_msisdn_hour.is_some() || self.per_msisdn_day.is_some()
    }

    /// Minutes of per-MSISDN history any cap looks at.
    fn msisdn_retention(&self) -> u32 {
        if self.per_msisdn_day.is_some() {
            DAY
        } else {
            HOUR
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The counters stay consistent even if a holder panicked: no update spans a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counter key and the most specific matching rule. A number that does not parse
    /// matches no rule.
    fn resolve(&self, msisdn: &str) -> Destination {
        let canonical = msisdn.len() > 1
            && msisdn.starts_with('+')
            && msisdn[1..].bytes().all(|b| b.is_ascii_digit());
        if self.rules.is_empty() && canonical {
            return Destination {
                key: msisdn.to_owned(),
                rule: None,
            };
        }
        let Ok(n) = phonenumber::parse(None, msisdn.trim()) else {
            return Destination {
                key: msisdn.trim().to_owned(),
                rule: None,
            };
        };
        let e164 = n.format().mode(Mode::E164).to_string();
        let rule = self
            .prefixes
            .iter()
            .find(|(p, _)| e164.starts_with(p.as_str()))
            .map(|&(_, i)| i)
            .or_else(|| {
                let id = n.country().id()?;
                self.countries.get(id.as_ref()).copied()
            });
        Destination { key: e164, rule }
    }
}

/// Minutes of history a cap rule's limits look at.
fn rule_retention(rule: &Rule) -> u32 {
    if rule.per_day.is_some() { DAY } else { HOUR }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute boundary (2023-11-14T22:13:00Z).
    const T0: i64 = 28_333_333 * MINUTE_MS;
    const MIN: i64 = MINUTE_MS;
    const HOUR_MS: i64 = 60 * MIN;

    const JP: &str = "+819012345678";
    const JP2: &str = "+819087654321";
    const JP3: &str = "+818012345678";
    const US: &str = "+12024561111";
    const CA: &str = "+16137827274";
    const GB: &str = "+442071234567";
    const FR: &str = "+33612345678";

    fn raw(prefix: Option<&str>, country: Option<&str>, action: RuleAction) -> DestinationRule {
        DestinationRule {
            prefix: prefix.map(str::to_owned),
            country: country.map(str::to_owned),
            action,
            per_hour: None,
            per_day: None,
        }
    }

    /// A prefix rule for "+...", else a country rule.
    fn rule(dest: &str, action: RuleAction) -> DestinationRule {
        if dest.starts_with('+') {
            raw(Some(dest), None, action)
        } else {
            raw(None, Some(dest), action)
        }
    }

    fn cap(prefix: &str, per_hour: Option<u32>, per_day: Option<u32>) -> DestinationRule {
        DestinationRule {
            per_hour,
            per_day,
            ..rule(prefix, RuleAction::Cap)
        }
    }

    fn per_msisdn(hour: Option<u32>, day: Option<u32>) -> CapsConfig {
        CapsConfig {
            per_msisdn_hour: hour,
            per_msisdn_day: day,
            ..CapsConfig::default()
        }
    }

    fn with_rules(rules: Vec<DestinationRule>) -> CapsConfig {
        CapsConfig {
            destinations: rules,
            ..CapsConfig::default()
        }
    }

    fn over(retry_after_secs: u64, cap: &str) -> Denied {
        Denied::Over {
            retry_after_secs,
            cap: cap.into(),
        }
    }

    fn blocked(rule: &str) -> Denied {
        Denied::Blocked { rule: rule.into() }
    }

    fn caps(cfg: CapsConfig) -> Caps {
        cfg.validate().unwrap();
        Caps::new(&cfg)
    }

    #[test]
    fn caps_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Caps>();
        check::<Reservation<'static>>();
    }

    #[test]
    fn nothing_configured_is_disabled_and_allows() {
        let c = caps(CapsConfig::default());
        assert!(!c.enabled());
        for _ in 0..100 {
            c.check(JP, T0).unwrap();
        }
        assert!(c.lock().msisdns.is_empty());
        assert!(caps(per_msisdn(Some(1), None)).enabled());
        assert!(caps(per_msisdn(None, Some(1))).enabled());
        assert!(caps(with_rules(vec![rule("JP", RuleAction::Allow)])).enabled());
        assert!(
            caps(CapsConfig {
                default_action: DefaultAction::Block,
                ..CapsConfig::default()
            })
            .enabled()
        );
    }

    #[test]
    fn per_hour_cap_denies_the_next_send_until_the_window_slides() {
        let c = caps(per_msisdn(Some(3), None));
        c.check(JP, T0 + 15_000).unwrap();
        c.check(JP, T0 + 10 * MIN).unwrap();
        c.check(JP, T0 + 20 * MIN).unwrap();
        // The first send's minute leaves the window at T0 + 60 min.
        assert_eq!(
            c.check(JP, T0 + 30 * MIN + 20_000).unwrap_err(),
            over(29 * 60 + 40, "msisdn per hour")
        );
        assert_eq!(
            c.check(JP, T0 + HOUR_MS - 1).unwrap_err(),
            over(1, "msisdn per hour")
        );
        // Other numbers have their own count.
        c.check(JP2, T0 + 30 * MIN).unwrap();
        c.check(JP, T0 + HOUR_MS).unwrap();
        // Full again: the send at T0 + 10 min is the next to leave.
        assert_eq!(
            c.check(JP, T0 + HOUR_MS + 30_000).unwrap_err(),
            over(9 * 60 + 30, "msisdn per hour")
        );
    }

    #[test]
    fn retry_after_waits_for_enough_sends_to_leave() {
        let c = caps(per_msisdn(Some(2), None));
        c.seed([
            (JP.to_owned(), T0),
            (JP.to_owned(), T0 + 5 * MIN),
            (JP.to_owned(), T0 + 5 * MIN),
            (JP.to_owned(), T0 + 7 * MIN),
        ]);
        // Four in the window, limit two: three must leave, the last of them at T0 + 5 min.
        assert_eq!(
            c.check(JP, T0 + 10 * MIN).unwrap_err(),
            over(55 * 60, "msisdn per hour")
        );
    }

    #[test]
    fn per_day_cap() {
        let c = caps(per_msisdn(None, Some(2)));
        c.check(JP, T0).unwrap();
        c.check(JP, T0 + 5 * HOUR_MS).unwrap();
        assert_eq!(
            c.check(JP, T0 + 10 * HOUR_MS).unwrap_err(),
            over(14 * 3600, "msisdn per day")
        );
        c.check(JP, T0 + 24 * HOUR_MS).unwrap();
        assert_eq!(
            c.check(JP, T0 + 24 * HOUR_MS + MIN).unwrap_err(),
            over(5 * 3600 - 60, "msisdn per day")
        );
    }

    #[test]
    fn the_longest_wait_is_reported() {
        let c = caps(per_msisdn(Some(1), Some(2)));
        c.check(JP, T0).unwrap();
        c.check(JP, T0 + 2 * HOUR_MS).unwrap();
        // Over both: an hour cap that frees up in 59 min and a day cap in 22 h.
        assert_eq!(
            c.check(JP, T0 + 2 * HOUR_MS + MIN).unwrap_err(),
            over(22 * 3600 - 60, "msisdn per day")
        );
    }

    #[test]
    fn release_gives_the_slot_back_and_drop_keeps_it() {
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(1),
            destinations: vec![cap("+8190", Some(1), None)],
            ..CapsConfig::default()
        });
        c.check(JP, T0).unwrap().release();
        assert!(c.lock().msisdns.is_empty());
        assert!(c.lock().rules[0].is_empty());
        let r = c.check(JP, T0 + MIN).unwrap();
        assert!(c.check(JP, T0 + MIN).is_err());
        r.release();
        drop(c.check(JP, T0 + 2 * MIN).unwrap());
        assert_eq!(
            c.check(JP, T0 + 3 * MIN).unwrap_err(),
            over(59 * 60, "msisdn per hour")
        );
    }

    #[test]
    fn release_after_prune_is_harmless() {
        let c = caps(per_msisdn(Some(1), None));
        let r = c.check(JP, T0).unwrap();
        c.prune(T0 + 2 * HOUR_MS);
        r.release();
        c.check(JP, T0 + 2 * HOUR_MS).unwrap();
    }

    #[test]
    fn seeded_sends_count_and_are_never_denied() {
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(2),
            destinations: vec![cap("+8190", Some(3), None), rule("US", RuleAction::Block)],
            ..CapsConfig::default()
        });
        c.seed([
            (JP.to_owned(), T0 - 10 * MIN),
            (JP.to_owned(), T0 - 30 * MIN),
            (JP.to_owned(), T0 - 20 * MIN),
            (US.to_owned(), T0 - 20 * MIN),
            (US.to_owned(), T0 - 20 * MIN),
            (US.to_owned(), T0 - 20 * MIN),
        ]);
        // Three in the hour, limit two: the sends at -30 and -20 min must leave.
        assert_eq!(
            c.check(JP, T0).unwrap_err(),
            over(40 * 60, "msisdn per hour")
        );
        // The three seeded sends to JP fill the prefix budget for every number under it.
        assert_eq!(
            c.check(JP2, T0).unwrap_err(),
            over(30 * 60, "prefix +8190 per hour")
        );
        // Seeding never denies, even a blocked destination; it still counts per MSISDN.
        assert_eq!(c.lock().msisdns[US].buckets, vec![(minute_of(T0) - 20, 3)]);
    }

    #[test]
    fn seeding_normalises_numbers() {
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(2),
            destinations: vec![rule("JP", RuleAction::Allow)],
            ..CapsConfig::default()
        });
        c.seed([
            ("+81 90 1234 5678".to_owned(), T0 - MIN),
            ("+81 90 1234 5678".to_owned(), T0 - MIN),
        ]);
        assert!(c.check(JP, T0).is_err());
    }

    #[test]
    fn longest_prefix_beats_shorter_prefix_and_country() {
        let c = caps(with_rules(vec![
            rule("JP", RuleAction::Block),
            cap("+81", Some(1), None),
            rule("+8190", RuleAction::Block),
            rule("+81901", RuleAction::Allow),
        ]));
        for _ in 0..5 {
            c.check(JP, T0).unwrap();
        }
        assert_eq!(
            c.check(JP2, T0).unwrap_err(),
            blocked("destination prefix +8190 is blocked")
        );
        c.check(JP3, T0).unwrap();
        assert_eq!(
            c.check("+818087654321", T0).unwrap_err(),
            over(3600, "prefix +81 per hour")
        );
    }

    #[test]
    fn country_rules_use_the_numbers_region() {
        let c = caps(with_rules(vec![
            cap("JP", Some(1), None),
            rule("US", RuleAction::Block),
        ]));
        c.check(JP, T0).unwrap();
        assert_eq!(
            c.check("+81 80 1234 5678", T0).unwrap_err(),
            over(3600, "country JP per hour")
        );
        assert_eq!(
            c.check(US, T0).unwrap_err(),
            blocked("country US is blocked")
        );
        // Same country code, another region.
        c.check(CA, T0).unwrap();
        c.check(GB, T0).unwrap();
    }

    #[test]
    fn default_block_with_an_allow_list() {
        let c = caps(CapsConfig {
            default_action: DefaultAction::Block,
            destinations: vec![
                rule("JP", RuleAction::Allow),
                rule("+4420", RuleAction::Allow),
            ],
            ..CapsConfig::default()
        });
        c.check(JP, T0).unwrap();
        c.check(GB, T0).unwrap();
        let outside = blocked("destinations outside the allow list are blocked");
        assert_eq!(c.check(FR, T0).unwrap_err(), outside);
        assert_eq!(c.check("+447911123456", T0).unwrap_err(), outside);
        // A number that does not parse matches no rule.
        assert_eq!(c.check("not a number", T0).unwrap_err(), outside);
    }

    #[test]
    fn unparseable_numbers_match_no_rule() {
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(1),
            destinations: vec![rule("+1", RuleAction::Block)],
            ..CapsConfig::default()
        });
        c.check("+1", T0).unwrap();
        assert_eq!(
            c.check("+1", T0).unwrap_err(),
            over(3600, "msisdn per hour")
        );
        assert_eq!(
            c.check(US, T0).unwrap_err(),
            blocked("destination prefix +1 is blocked")
        );
    }

    #[test]
    fn non_geographic_numbers_match_prefixes_only() {
        let c = caps(CapsConfig {
            default_action: DefaultAction::Block,
            destinations: vec![
                rule("+882", RuleAction::Block),
                rule("+881", RuleAction::Allow),
                rule("JP", RuleAction::Allow),
            ],
            ..CapsConfig::default()
        });
        assert_eq!(
            c.check("+88216123456", T0).unwrap_err(),
            blocked("destination prefix +882 is blocked")
        );
        c.check("+881612345678", T0).unwrap();
        assert_eq!(
            c.check("+8823451234567", T0).unwrap_err(),
            blocked("destination prefix +882 is blocked")
        );
        assert_eq!(
            c.check("+87012345678", T0).unwrap_err(),
            blocked("destinations outside the allow list are blocked")
        );
    }

    #[test]
    fn allow_rules_still_obey_per_msisdn_caps() {
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(1),
            destinations: vec![rule("JP", RuleAction::Allow)],
            ..CapsConfig::default()
        });
        c.check(JP, T0).unwrap();
        assert_eq!(
            c.check("+81 90-1234-5678", T0).unwrap_err(),
            over(3600, "msisdn per hour")
        );
        c.check(JP2, T0).unwrap();
    }

    #[test]
    fn a_cap_rule_is_one_budget_for_all_its_numbers() {
        let c = caps(with_rules(vec![cap("+8190", Some(2), Some(3))]));
        c.check(JP, T0).unwrap();
        c.check(JP2, T0 + MIN).unwrap();
        assert_eq!(
            c.check("+819011112222", T0 + 2 * MIN).unwrap_err(),
            over(58 * 60, "prefix +8190 per hour")
        );
        // Not matched by the rule: no budget.
        c.check(JP3, T0).unwrap();
        c.check("+819011112222", T0 + HOUR_MS).unwrap();
        // One in the hour, but three in the day: the send at T0 leaves at T0 + 24 h.
        assert_eq!(
            c.check("+819033334444", T0 + HOUR_MS + MIN).unwrap_err(),
            over(24 * 3600 - 61 * 60, "prefix +8190 per day")
        );
    }

    #[test]
    fn denied_checks_count_nothing() {
        // Denied by the rule budget: the number's own count is untouched.
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(1),
            destinations: vec![cap("+8190", Some(1), None)],
            ..CapsConfig::default()
        });
        c.check(JP, T0).unwrap();
        assert!(c.check(JP2, T0 + 30 * MIN).is_err());
        assert!(!c.lock().msisdns.contains_key(JP2));
        c.check(JP2, T0 + HOUR_MS).unwrap();

        // Denied by the per-MSISDN cap: the rule budget is untouched.
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(1),
            destinations: vec![cap("+8190", Some(2), None)],
            ..CapsConfig::default()
        });
        c.check(JP, T0).unwrap();
        for _ in 0..3 {
            assert!(c.check(JP, T0).is_err());
        }
        c.check(JP2, T0).unwrap();
        assert_eq!(
            c.check("+819011112222", T0).unwrap_err(),
            over(3600, "prefix +8190 per hour")
        );

        // Blocked: nothing counted anywhere.
        let c = caps(CapsConfig {
            per_msisdn_hour: Some(1),
            destinations: vec![rule("US", RuleAction::Block)],
            ..CapsConfig::default()
        });
        assert!(c.check(US, T0).is_err());
        assert!(c.lock().msisdns.is_empty());
    }

    #[test]
    fn prune_drops_old_counts_and_empty_numbers() {
        let c = caps(CapsConfig {
            per_msisdn_day: Some(5),
            destinations: vec![cap("+8190", Some(10), None)],
            ..CapsConfig::default()
        });
        c.check(JP, T0).unwrap();
        c.check(JP2, T0 + 23 * HOUR_MS).unwrap();
        c.prune(T0 + 24 * HOUR_MS);
        {
            let s = c.lock();
            assert!(!s.msisdns.contains_key(JP));
            assert!(s.msisdns.contains_key(JP2));
            // The rule only looks back an hour.
            assert_eq!(s.rules[0].buckets.len(), 0);
        }
        c.prune(T0 + 47 * HOUR_MS - 1);
        assert_eq!(c.lock().msisdns.len(), 1);
        c.prune(T0 + 47 * HOUR_MS);
        assert!(c.lock().msisdns.is_empty());

        // Only hour caps: an hour of history is kept.
        let c = caps(per_msisdn(Some(5), None));
        c.check(JP, T0).unwrap();
        c.prune(T0 + 59 * MIN);
        assert_eq!(c.lock().msisdns.len(), 1);
        c.prune(T0 + HOUR_MS);
        assert!(c.lock().msisdns.is_empty());
    }

    #[test]
    fn counters_stay_sparse() {
        let c = caps(per_msisdn(Some(1000), Some(1000)));
        for i in 0..20 {
            c.check(JP, T0 + i * 7 * MIN).unwrap();
            c.check(JP, T0 + i * 7 * MIN + 1).unwrap();
        }
        assert_eq!(c.lock().msisdns[JP].buckets.len(), 20);
    }

    #[test]
    fn concurrent_checks_never_overshoot_a_budget() {
        let c = caps(with_rules(vec![cap("JP", Some(100), None)]));
        let allowed = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (c, allowed) = (&c, &allowed);
                s.spawn(move || {
                    for i in 0..50 {
                        let n = format!("+8190{:04}{:04}", t, i);
                        if c.check(&n, T0).is_ok() {
                            allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.into_inner(), 100);
    }

    fn invalid(cfg: CapsConfig) -> String {
        cfg.validate().unwrap_err().0
    }

    #[test]
    fn validate_accepts_good_configs() {
        CapsConfig::default().validate().unwrap();
        CapsConfig {
            per_msisdn_hour: Some(5),
            per_msisdn_day: Some(20),
            default_action: DefaultAction::Block,
            destinations: vec![
                rule("JP", RuleAction::Allow),
                rule("+882", RuleAction::Block),
                cap("+8190", Some(100), None),
                cap("+8180", None, Some(1000)),
                cap("US", Some(10), Some(100)),
            ],
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn validate_rejects() {
        let one = |r: DestinationRule| invalid(with_rules(vec![rule("JP", RuleAction::Allow), r]));
        for p in [
            "8190",
            "+",
            "+81a",
            "+81 90",
            "++81",
            "+1234567890123456",
            "",
        ] {
            assert_eq!(
                one(raw(Some(p), None, RuleAction::Block)),
                "caps.destination[1].prefix",
                "{p:?}"
            );
        }
        assert_eq!(
            one(raw(Some("+1"), Some("US"), RuleAction::Block)),
            "caps.destination[1]"
        );
        assert_eq!(
            one(raw(None, None, RuleAction::Block)),
            "caps.destination[1]"
        );
        for c in ["jp", "JPN", "J", "", "J1", "XX"] {
            assert_eq!(
                one(raw(None, Some(c), RuleAction::Block)),
                "caps.destination[1].country",
                "{c:?}"
            );
        }
        assert_eq!(
            one(rule("JP", RuleAction::Block)),
            "caps.destination[1].country"
        );
        assert_eq!(
            invalid(with_rules(vec![
                rule("+81", RuleAction::Block),
                rule("+81", RuleAction::Allow)
            ])),
            "caps.destination[1].prefix"
        );
        assert_eq!(one(cap("+8190", None, None)), "caps.destination[1]");
        assert_eq!(
            one(cap("+8190", Some(0), None)),
            "caps.destination[1].per_hour"
        );
        assert_eq!(
            one(cap("+8190", Some(5), Some(0))),
            "caps.destination[1].per_day"
        );
        for action in [RuleAction::Allow, RuleAction::Block] {
            assert_eq!(
                one(DestinationRule {
                    per_hour: Some(5),
                    ..rule("+8190", action)
                }),
                "caps.destination[1].per_hour"
            );
            assert_eq!(
                one(DestinationRule {
                    per_day: Some(5),
                    ..rule("+8190", action)
                }),
                "caps.destination[1].per_day"
            );
        }
        assert_eq!(invalid(per_msisdn(Some(0), None)), "caps.per_msisdn_hour");
        assert_eq!(invalid(per_msisdn(None, Some(0))), "caps.per_msisdn_day");
    }

    fn from_toml(text: &str) -> Result<CapsConfig, String> {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(text))
            .extract::<CapsConfig>()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn deserializes_from_toml() {
        let cfg = from_toml(
            r#"
per_msisdn_hour = 5
per_msisdn_day = 20
default_action = "block"

[[destination]]
country = "JP"
action = "allow"

[[destination]]
prefix = "+8190"
action = "cap"
per_hour = 100
per_day = 1000

[[destination]]
prefix = "+882"
action = "block"
"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.per_msisdn_hour, Some(5));
        assert_eq!(cfg.per_msisdn_day, Some(20));
        assert_eq!(cfg.default_action, DefaultAction::Block);
        assert_eq!(
            cfg.destinations,
            vec![
                rule("JP", RuleAction::Allow),
                cap("+8190", Some(100), Some(1000)),
                rule("+882", RuleAction::Block),
            ]
        );

        let empty = from_toml("").unwrap();
        assert!(!Caps::new(&empty).enabled());
        assert_eq!(empty.default_action, DefaultAction::Allow);

        assert!(from_toml("per_msisdn_week = 5").is_err());
        assert!(from_toml("default_action = \"deny\"").is_err());
        assert!(from_toml("[[destination]]\nprefix = \"+1\"").is_err());
        assert!(from_toml("[[destination]]\nprefix = \"+1\"\naction = \"drop\"").is_err());
        assert!(
            from_toml("[[destination]]\nprefix = \"+1\"\naction = \"block\"\nlimit = 3").is_err()
        );
    }
}
