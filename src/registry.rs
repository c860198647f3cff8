//! The subscriber registry: subscribers keyed by E.164 number and the devices they
//! registered, in priority order. A delivery to a registered subscriber snapshots these
//! devices into its plan (see `store::writer::snapshot_plan`).
//!
//! Numbers are normalised with the `phonenumber` crate (libphonenumber's metadata), so
//! "090-1234-5678" with default region JP and "+81 90 1234 5678" are the same subscriber.

use phonenumber::Mode;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Device kinds a subscriber can register.
pub const KINDS: [&str; 6] = ["sms", "ussd", "pager", "fax", "email", "carnav"];

/// Normalise a phone number to E.164. `default_region` (ISO 3166 alpha-2, e.g. "JP") lets
/// national formats through; without it only international formats are accepted.
pub fn normalize_msisdn(input: &str, default_region: Option<&str>) -> Result<String, String> {
    let region = match default_region {
        Some(r) => Some(
            r.parse::<phonenumber::country::Id>()
                .map_err(|_| format!("unknown region {r:?}"))?,
        ),
        None => None,
    };
    let n = phonenumber::parse(region, input.trim())
        .map_err(|_| "not a phone number (use E.164, e.g. +819012345678)".to_owned())?;
    if !phonenumber::is_valid(&n) {
        return Err("not a valid phone number for its country".into());
    }
    Ok(n.format().mode(Mode::E164).to_string())
}

/// Check and normalise a device address for its kind.
pub fn normalize_address(
    kind: &str,
    address: &str,
    region: Option<&str>,
) -> Result<String, String> {
    let a = address.trim();
    match kind {
        "sms" | "ussd" | "fax" => normalize_msisdn(a, region),
        "email" => {
            let ok = a.len() <= 254
                && a.split('@').count() == 2
                && a.split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
                && !a
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if ok {
                Ok(a.to_owned())
            } else {
                Err("not an e-mail address".into())
            }
        }
        "pager" | "carnav" => {
            let max = if kind == "pager" { 32 } else { 64 };
            let ok = !a.is_empty()
                && a.len() <= max
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if ok {
                Ok(a.to_owned())
            } else {
                Err(format!(
                    "a {kind} id is 1 to {max} letters, digits, '-', '_', '.' or ':'"
                ))
            }
        }
        _ => Err(format!("kind must be one of {}", KINDS.join(", "))),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Device {
    pub id: String,
    pub kind: String,
    pub address: String,
    pub priority: i64,
    /// Milliseconds; None: the configured default.
    pub step_timeout_ms: Option<i64>,
    pub options: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subscriber {
    pub msisdn: String,
    pub name: Option<String>,
    pub devices: Vec<Device>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A device to add, already validated and normalised.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub kind: String,
    pub address: String,
    pub priority: Option<i64>,
    pub step_timeout_ms: Option<i64>,
    pub options: Option<serde_json::Value>,
}

/// Create or rename a subscriber. Returns true when it was created.
pub fn put_subscriber(
    c: &Connection,
    msisdn: &str,
    name: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let updated = c
        .prepare_cached("UPDATE subscribers SET name = ?2, updated_at = ?3 WHERE msisdn = ?1")?
        .execute(params![msisdn, name, now])?;
    if updated > 0 {
        return Ok(false);
    }
    c.prepare_cached(
        "INSERT INTO subscribers (msisdn, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![msisdn, name, now])?;
    Ok(true)
}

/// Remove a subscriber and its devices. False when there was none.
pub fn delete_subscriber(c: &Connection, msisdn: &str) -> Result<bool, StoreError> {
    c.prepare_cached("DELETE FROM devices WHERE msisdn = ?1")?
        .execute(params![msisdn])?;
    Ok(
        c.prepare_cached("DELETE FROM subscribers WHERE msisdn = ?1")?
            .execute(params![msisdn])?
            > 0,
    )
}

/// Add a device; None when the subscriber does not exist.
pub fn add_device(
    c: &Connection,
    msisdn: &str,
    d: &NewDevice,
    now: i64,
) -> Result<Option<Device>, StoreError> {
    let exists: Option<i64> = c
        .prepare_cached("SELECT 1 FROM subscribers WHERE msisdn = ?1")?
        .query_row(params![msisdn], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let priority = match d.priority {
        Some(p) => p,
        None => c
            .prepare_cached(
                "SELECT coalesce(max(priority), 0) + 10 FROM devices WHERE msisdn = ?1",
            )?
            .query_row(params![msisdn], |r| r.get(0))?,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let options = d.options.as_ref().map(|o| o.to_string());
    c.prepare_cached(
        "INSERT INTO devices (id, msisdn, kind, address, priority, step_timeout_ms, options, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![id, msisdn, d.kind, d.address, priority, d.step_timeout_ms, options, now])?;
    c.prepare_cached("UPDATE subscribers SET updated_at = ?2 WHERE msisdn = ?1")?
        .execute(params![msisdn, now])?;
    Ok(Some(Device {
        id,
        kind: d.kind.clone(),
        address: d.address.clone(),
        priority,
        step_timeout_ms: d.step_timeout_ms,
        options: d.options.clone(),
    }))
}

pub fn remove_device(c: &Connection, msisdn: &str, id: &str) -> Result<bool, StoreError> {
    Ok(
        c.prepare_cached("DELETE FROM devices WHERE msisdn = ?1 AND id = ?2")?
            .execute(params![msisdn, id])?
            > 0,
    )
}

pub fn read_subscriber(c: &Connection, msisdn: &str) -> Result<Option<Subscriber>, StoreError> {
    let s = c
        .prepare_cached(
            "SELECT msisdn, name, created_at, updated_at FROM subscribers WHERE msisdn = ?1",
        )?
        .query_row(params![msisdn], |r| {
            Ok(Subscriber {
                msisdn: r.get(0)?,
                name: r.get(1)?,
                devices: Vec::new(),
                created_at: r.get(2)?,
                updated_at: r.get(3)?,
            })
        })
        .optional()?;
    let Some(mut s) = s else { return Ok(None) };
    let mut st = c.prepare_cached(
        "SELECT id, kind, address, priority, step_timeout_ms, options FROM devices
         WHERE msisdn = ?1 ORDER BY priority, created_at",
    )?;
    let rows = st.query_map(params![msisdn], |r| {
        let options: Option<String> = r.get(5)?;
        Ok(Device {
            id: r.get(0)?,
            kind: r.get(1)?,
            address: r.get(2)?,
            priority: r.get(3)?,
            step_timeout_ms: r.get(4)?,
            options: options.and_then(|o| serde_json::from_str(&o).ok()),
        })
    })?;
    for d in rows {
        s.devices.push(d?);
    }
    Ok(Some(s))
}

/// One row of a subscriber import file, validated.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub msisdn: String,
    pub name: Option<String>,
    pub device: Option<NewDevice>,
}

/// Parse an import file: CSV with a header `msisdn,name,kind,address,priority,step_timeout`
/// (name and the device columns may be empty; one row per device, a subscriber's rows may
/// repeat). Returns the good rows and the rejected ones as (line, reason).
pub fn parse_import(
    reader: impl std::io::Read,
    region: Option<&str>,
) -> (Vec<ImportRow>, Vec<(u64, String)>) {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => return (ok, vec![(1, format!("unreadable header: {e}"))]),
    };
    let want = [
        "msisdn",
        "name",
        "kind",
        "address",
        "priority",
        "step_timeout",
    ];
    if headers.iter().collect::<Vec<_>>() != want {
        return (
            ok,
            vec![(1, format!("the header must be {}", want.join(",")))],
        );
    }
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                bad.push((line, format!("malformed row: {e}")));
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: usize| rec.get(i).filter(|s| !s.is_empty());
        let row = (|| -> Result<ImportRow, String> {
            let msisdn = normalize_msisdn(field(0).ok_or("msisdn is empty")?, region)
                .map_err(|e| format!("msisdn: {e}"))?;
            let device = match field(2) {
                None => {
                    if field(3).is_some() {
                        return Err("address without kind".into());
                    }
                    None
                }
                Some(kind) => {
                    let address =
                        normalize_address(kind, field(3).ok_or("kind without address")?, region)
                            .map_err(|e| format!("address: {e}"))?;
                    let priority = field(4)
                        .map(|p| {
                            p.parse::<i64>()
                                .map_err(|_| "priority must be an integer".to_owned())
                        })
                        .transpose()?;
                    let step_timeout_ms = field(5)
                        .map(|t| crate::config::parse_duration(t).map(|d| d.as_millis() as i64))
                        .transpose()
                        .map_err(|e| format!("step_timeout: {e}"))?;
                    Some(NewDevice {
                        kind: kind.to_owned(),
                        address,
                        priority,
                        step_timeout_ms,
                        options: None,
                    })
                }
            };
            Ok(ImportRow {
                line,
                msisdn,
                name: field(1).map(str::to_owned),
                device,
            })
        })();
        match row {
            Ok(r) => ok.push(r),
            Err(e) => bad.push((line, e)),
        }
    }
    (ok, bad)
}

/// Import rows in one transaction per call; returns (subscribers created, devices added).
pub async fn import(
    store: &Store,
    rows: Vec<ImportRow>,
    now: i64,
) -> Result<(usize, usize), StoreError> {
    store
        .write(move |c| {
            let (mut subs, mut devs) = (0, 0);
            for r in &rows {
                let existing: Option<Option<String>> = c
                    .prepare_cached("SELECT name FROM subscribers WHERE msisdn = ?1")?
                    .query_row(params![r.msisdn], |row| row.get(0))
                    .optional()?;
                match existing {
                    None => {
                        put_subscriber(c, &r.msisdn, r.name.as_deref(), now)?;
                        subs += 1;
                    }
                    Some(old) if r.name.is_some() && old != r.name => {
                        put_subscriber(c, &r.msisdn, r.name.as_deref(), now)?;
                    }
                    Some(_) => {}
                }
                if let Some(d) = &r.device {
                    add_device(c, &r.msisdn, d, now)?;
                    devs += 1;
                }
            }
            Ok((subs, devs))
        })
        .await
}

/// OpenPGP keys for the e-mail channel, from the options of registered e-mail devices:
/// `{"openpgp_key": "-----BEGIN PGP PUBLIC KEY BLOCK-----...", "allow_plaintext": false}`.
pub struct RegistryKeys {
    store: Store,
}

impl RegistryKeys {
    pub fn new(store: Store) -> RegistryKeys {
        RegistryKeys { store }
    }
}

#[async_trait::async_trait]
impl pinpost_email::KeyLookup for RegistryKeys {
    async fn key_for(&self, address: &str) -> Option<(String, bool)> {
        let address = address.to_owned();
        let options: Option<String> = self
            .store
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT options FROM devices WHERE kind = 'email' AND address = ?1
                     ORDER BY created_at DESC LIMIT 1",
                )?
                .query_row(params![address], |r| r.get::<_, Option<String>>(0))
                .optional()?
                .flatten())
            })
            .await
            .ok()
            .flatten();
        let v: serde_json::Value = serde_json::from_str(&options?).ok()?;
        let plain = v["allow_plaintext"].as_bool().unwrap_or(false);
        match v["openpgp_key"].as_str() {
            Some(k) if !k.trim().is_empty() => Some((k.to_owned(), plain)),
            _ if plain => Some((String::new(), true)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_normalise_to_e164() {
        assert_eq!(
            normalize_msisdn("+81 90-1234-5678", None).unwrap(),
            "+819012345678"
        );
        assert_eq!(
            normalize_msisdn("090-1234-5678", Some("JP")).unwrap(),
            "+819012345678"
        );
        assert_eq!(
            normalize_msisdn("+1 (202) 555-0123", None).unwrap(),
            "+12025550123"
        );
        assert!(
            normalize_msisdn("090-1234-5678", None).is_err(),
            "national without region"
        );
        assert!(normalize_msisdn("+81 12", None).is_err());
        assert!(normalize_msisdn("hello", Some("JP")).is_err());
        assert!(normalize_msisdn("+819012345678", Some("XX")).is_err());
    }

    #[test]
    fn addresses_per_kind() {
        assert_eq!(
            normalize_address("email", " a.b@example.jp ", None).unwrap(),
            "a.b@example.jp"
        );
        assert!(normalize_address("email", "a@b@c.jp", None).is_err());
        assert!(normalize_address("email", "nobody", None).is_err());
        assert_eq!(
            normalize_address("fax", "03-1234-5678", Some("JP")).unwrap(),
            "+81312345678"
        );
        assert_eq!(
            normalize_address("carnav", "VIN-JT123", None).unwrap(),
            "VIN-JT123"
        );
        assert!(normalize_address("carnav", "has space", None).is_err());
        assert!(normalize_address("pigeon", "x", None).is_err());
    }

    #[test]
    fn import_reports_bad_rows_by_line() {
        let csv = "msisdn,name,kind,address,priority,step_timeout\n\
                   090-1234-5678,Taro,sms,090-1234-5678,10,2m\n\
                   +819012345678,,email,taro@example.jp,20,\n\
                   12,,sms,12,,\n\
                   +819087654321,Hanako,fax,,,\n\
                   +819087654321,Hanako,,,,\n";
        let (ok, bad) = parse_import(csv.as_bytes(), Some("JP"));
        assert_eq!(ok.len(), 3);
        assert_eq!(ok[0].msisdn, "+819012345678");
        assert_eq!(
            ok[0].device.as_ref().unwrap().step_timeout_ms,
            Some(120_000)
        );
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, 4);
        assert!(bad[0].1.contains("msisdn"), "{bad:?}");
        assert_eq!(bad[1].0, 5);
        let (_, bad) = parse_import("phone,name\n1,2\n".as_bytes(), None);
        assert_eq!(bad[0].0, 1);
    }
}
