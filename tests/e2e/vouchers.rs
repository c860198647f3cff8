//! Vouchers through the real daemon: issue → the PIN reaches the loopback SMSC → a merchant
//! redeems it → settlement. Also concurrency, reversal, revocation and brute-force lockout.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const MSISDN: &str = "+819012345678";

fn issue(d: &Daemon, key: &str, body: &Value) -> Resp {
    http(
        "POST",
        &format!("{}/v1/vouchers", d.base),
        Some(&d.token),
        &[("Idempotency-Key", key)],
        Some(&body.to_string()),
    )
}

fn voucher_body(payee: &str, value: &str, partial: bool) -> Value {
    json!({
        "msisdn": MSISDN,
        "amount": {"value": value, "currency": "JPY"},
        "payee": payee,
        "funding": {"source": "credit_company", "institution": "card-co", "reference": "auth-77"},
        "ttl": "1h",
        "allow_partial": partial,
    })
}

fn redeem(d: &Daemon, token: &str, pin: &str, value: &str, order: &str) -> Resp {
    let body =
        json!({"pin": pin, "amount": {"value": value, "currency": "JPY"}, "order_ref": order});
    http(
        "POST",
        &format!("{}/v1/redemptions", d.base),
        Some(token),
        &[],
        Some(&body.to_string()),
    )
}

/// The 16-digit PIN in an SMS text, where it is written in groups of four.
fn pin_in(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split(|c: char| !c.is_ascii_digit()).collect();
    words.windows(4).find_map(|w| {
        (w.iter().all(|g| g.len() == 4) && text.contains(&w.join(" "))).then(|| w.concat())
    })
}

/// Issue a voucher and wait until its PIN reached the SMSC; returns (voucher id, PIN).
fn issue_and_receive(d: &Daemon, smsc: &Smsc, key: &str, body: &Value) -> (String, String) {
    let before = smsc.messages().len();
    let r = issue(d, key, body);
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.body["state"], "issued");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let delivery = r.body["delivery_id"].as_str().unwrap().to_owned();
    d.wait_states(&[delivery], &["delivered"], Duration::from_secs(20));
    let msgs = smsc.wait_messages(before + 1, Duration::from_secs(10));
    let text = msgs[before]["text"].as_str().unwrap().to_owned();
    let pin = pin_in(&text).unwrap_or_else(|| panic!("no grouped PIN in {text:?}"));
    assert!(pinpost::vouchers::pin_well_formed(&pin, 16), "check digit");
    (id, pin)
}

fn get_voucher(d: &Daemon, id: &str) -> Resp {
    http(
        "GET",
        &format!("{}/v1/vouchers/{id}", d.base),
        Some(&d.token),
        &[],
        None,
    )
}

fn wait_voucher_state(d: &Daemon, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = get_voucher(d, id).body;
        if v["state"] == state {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "voucher not {state}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Change one digit: the check digit then fails.
fn typo(pin: &str) -> String {
    let mut b = pin.as_bytes().to_vec();
    b[3] = if b[3] == b'9' { b'0' } else { b[3] + 1 };
    String::from_utf8(b).unwrap()
}

/// A well-formed PIN (valid check digit) that was never issued.
fn unissued_pin(pin: &str) -> String {
    let mut body = pin[..15].to_owned();
    body.replace_range(0..1, if &pin[0..1] == "1" { "2" } else { "1" });
    let check = pinpost::vouchers::damm_digit(body.as_bytes());
    format!("{body}{check}")
}

fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

#[test]
fn voucher_issued_delivered_redeemed_and_settled() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let body = voucher_body("shop-1", "3000", false);
    let (id, pin) = issue_and_receive(&d, &smsc, "v-1", &body);
    let grouped = format!(
        "{} {} {} {}",
        &pin[0..4],
        &pin[4..8],
        &pin[8..12],
        &pin[12..16]
    );
    let text = smsc
        .texts()
        .into_iter()
        .find(|t| t.contains(&grouped))
        .unwrap();
    assert!(text.contains("3000") && text.contains("JPY"), "{text}");
    assert!(text.contains("shop-1"), "{text}");

    // The same request again is a replay; the same key with another body a conflict.
    let replay = issue(&d, "v-1", &body);
    assert_eq!(replay.status, 200, "{}", replay.raw);
    assert_eq!(replay.body["id"], id.as_str());
    let conflict = issue(&d, "v-1", &voucher_body("shop-1", "5000", false));
    assert_eq!(conflict.status, 422, "{}", conflict.raw);
    assert_eq!(smsc.messages().len(), 1, "a replay sends nothing");

    let v = wait_voucher_state(&d, &id, "delivered");
    assert_eq!(v["amount"], json!({"value": "3000", "currency": "JPY"}));
    assert_eq!(v["funding"]["institution"], "card-co");

    let mut bodies = Vec::new();
    let wrong_merchant = redeem(&d, SHOP2_TOKEN, &pin, "3000", "o-2");
    let unknown = redeem(&d, SHOP1_TOKEN, &unissued_pin(&pin), "3000", "o-3");
    let mistyped = redeem(&d, SHOP1_TOKEN, &typo(&pin), "3000", "o-4");
    for r in [&wrong_merchant, &unknown, &mistyped] {
        assert_eq!(r.status, 402, "{}", r.raw);
        assert_eq!(r.body["error"]["code"], "pin_not_valid", "{}", r.raw);
    }
    assert_eq!(
        wrong_merchant.raw, unknown.raw,
        "another merchant's PIN looks exactly like an unknown one"
    );
    let wrong_amount = redeem(&d, SHOP1_TOKEN, &pin, "2000", "o-5");
    assert_eq!(wrong_amount.status, 402);
    assert_eq!(
        wrong_amount.body["error"]["code"],
        "amount_must_equal_value"
    );

    let ok = redeem(&d, SHOP1_TOKEN, &pin, "3000", "o-1");
    assert_eq!(ok.status, 201, "{}", ok.raw);
    assert_eq!(ok.body["voucher_id"], id.as_str());
    assert_eq!(
        ok.body["captured"],
        json!({"value": "3000", "currency": "JPY"})
    );
    assert_eq!(
        ok.body["remaining"],
        json!({"value": "0", "currency": "JPY"})
    );
    let again = redeem(&d, SHOP1_TOKEN, &pin, "3000", "o-1");
    assert_eq!(
        again.status, 200,
        "a retried request answers the first capture"
    );
    assert_eq!(again.body["redemption_id"], ok.body["redemption_id"]);
    let second = redeem(&d, SHOP1_TOKEN, &pin, "3000", "o-6");
    assert_eq!(second.status, 402, "{}", second.raw);
    assert_eq!(second.body["error"]["code"], "voucher_redeemed");
    assert_eq!(get_voucher(&d, &id).body["state"], "redeemed");
    bodies.extend([
        wrong_merchant.raw,
        unknown.raw,
        mistyped.raw,
        ok.raw,
        again.raw,
        second.raw,
    ]);

    // Settlement: the payout to the shop and the claim on the card company.
    let run = d.admin("POST", &format!("/v1/settlements/{}", today()), None);
    assert_eq!(run.status, 201, "{}", run.raw);
    assert_eq!(run.body["redemptions"], 1);
    assert_eq!(
        run.body["payouts"],
        json!([{"merchant": "shop-1", "amount": {"value": "3000", "currency": "JPY"}, "redemptions": 1}])
    );
    assert_eq!(
        run.body["claims"],
        json!([{"institution": "card-co", "amount": {"value": "3000", "currency": "JPY"}, "redemptions": 1}])
    );
    let csv = d.admin(
        "GET",
        &format!("/v1/settlements/{}?format=csv", today()),
        None,
    );
    assert_eq!(csv.status, 200);
    assert!(
        csv.raw
            .contains(&format!("{},merchant,shop-1,JPY,3000,1", today())),
        "{}",
        csv.raw
    );
    assert!(
        csv.raw
            .contains(&format!("{},institution,card-co,JPY,3000,1", today())),
        "{}",
        csv.raw
    );
    let billing = http(
        "GET",
        &format!("{}/v1/settlements/{}", d.base, today()),
        Some(&d.token),
        &[],
        None,
    );
    assert_eq!(billing.status, 403, "settlements are for admins");

    // The CLI on the same database: nothing is settled twice.
    let out = std::process::Command::new(BIN)
        .args(["settle", "--date", &today(), "--csv", "--config"])
        .arg(&d.config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = String::from_utf8(out.stdout).unwrap();
    assert!(cli.contains(",merchant,shop-1,JPY,3000,1"), "{cli}");
    let rerun = d.admin("POST", &format!("/v1/settlements/{}", today()), None);
    assert_eq!(rerun.status, 200, "nothing new to settle: {}", rerun.raw);
    assert_eq!(rerun.body["payouts"], run.body["payouts"]);

    // The PIN is nowhere but at the SMSC: not in the log, any answer, or the state files.
    let log = d.proc.log();
    for needle in [pin.as_str(), grouped.as_str()] {
        assert!(!log.contains(needle), "PIN in the daemon log");
        assert!(
            !bodies.iter().any(|b| b.contains(needle)),
            "PIN in a response"
        );
        assert!(!get_voucher(&d, &id).raw.contains(needle));
        assert!(
            files_containing(dir.path(), needle.as_bytes()).is_empty(),
            "PIN in the state files"
        );
    }
}

#[test]
fn concurrent_redemptions_of_one_pin_exactly_one_wins() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    ));
    let race = |pin: String, value: &'static str, n: usize| -> Vec<Resp> {
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (d, b, pin) = (d.clone(), barrier.clone(), pin.clone());
                std::thread::spawn(move || {
                    b.wait();
                    redeem(&d, SHOP1_TOKEN, &pin, value, &format!("race-{value}-{i}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };

    let (_, pin) = issue_and_receive(&d, &smsc, "c-1", &voucher_body("*", "3000", false));
    let results = race(pin, "3000", 16);
    let won: Vec<&Resp> = results.iter().filter(|r| r.status == 201).collect();
    assert_eq!(won.len(), 1, "exactly one capture");
    for r in results.iter().filter(|r| r.status != 201) {
        assert_eq!(r.status, 402, "{}", r.raw);
        assert_eq!(r.body["error"]["code"], "voucher_redeemed");
    }

    // A partial voucher of 3000 raced by eight 1000s: exactly three captures.
    let (id, pin) = issue_and_receive(&d, &smsc, "c-2", &voucher_body("shop-1", "3000", true));
    let results = race(pin, "1000", 8);
    assert_eq!(results.iter().filter(|r| r.status == 201).count(), 3);
    assert!(
        results
            .iter()
            .filter(|r| r.status != 201)
            .all(|r| r.body["error"]["code"] == "voucher_redeemed")
    );
    let v = get_voucher(&d, &id).body;
    assert_eq!(v["state"], "redeemed");
    assert_eq!(v["remaining"]["value"], "0");
}

#[test]
fn reversal_revocation_and_brute_force_lockout() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_sections = "[vouchers]\ntoken_failures = 3\nglobal_failures = 100\n".into();
    let d = Daemon::start(dir.path(), &o);

    let (id, pin) = issue_and_receive(&d, &smsc, "r-1", &voucher_body("shop-1", "3000", true));
    let part = redeem(&d, SHOP1_TOKEN, &pin, "1000", "r-o1");
    assert_eq!(part.status, 201, "{}", part.raw);
    assert_eq!(part.body["remaining"]["value"], "2000");
    assert_eq!(get_voucher(&d, &id).body["state"], "partially_redeemed");
    let rid = part.body["redemption_id"].as_str().unwrap();
    let reverse = |token: &str| {
        http(
            "POST",
            &format!("{}/v1/redemptions/{rid}/reverse", d.base),
            Some(token),
            &[],
            None,
        )
    };
    assert_eq!(
        reverse(SHOP2_TOKEN).status,
        404,
        "another merchant's redemption"
    );
    let r = reverse(SHOP1_TOKEN);
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["remaining"]["value"], "3000");
    assert_eq!(r.body["voucher_state"], "delivered");
    assert_eq!(
        reverse(SHOP1_TOKEN).body["error"]["code"],
        "already_reversed"
    );

    let revoke = http(
        "POST",
        &format!("{}/v1/vouchers/{id}/revoke", d.base),
        Some(&d.token),
        &[],
        None,
    );
    assert_eq!(revoke.status, 200, "{}", revoke.raw);
    let after = redeem(&d, SHOP1_TOKEN, &pin, "1000", "r-o2");
    assert_eq!(
        after.body["error"]["code"], "voucher_revoked",
        "{}",
        after.raw
    );

    // Three guesses lock shop-2 out; shop-1 goes on.
    for i in 0..3 {
        let g = redeem(
            &d,
            SHOP2_TOKEN,
            &unissued_pin(&pin),
            "1000",
            &format!("g-{i}"),
        );
        assert_eq!(g.status, 402, "{}", g.raw);
    }
    let locked = http(
        "POST",
        &format!("{}/v1/redemptions", d.base),
        Some(SHOP2_TOKEN),
        &[],
        Some(
            &json!({"pin": pin, "amount": {"value": "1", "currency": "JPY"}, "order_ref": "g-x"})
                .to_string(),
        ),
    );
    assert_eq!(locked.status, 429, "{}", locked.raw);
    assert_eq!(locked.body["error"]["code"], "locked_out");
    let wait: u64 = locked.retry_after.as_deref().unwrap().parse().unwrap();
    assert!(wait >= 1, "Retry-After {wait}");
    assert_eq!(redeem(&d, SHOP1_TOKEN, &pin, "1000", "r-o3").status, 402);
    let metrics = http("GET", &format!("{}/metrics", d.base), None, &[], None).raw;
    assert!(
        metrics.contains("pinpost_redemption_lockouts_total{scope=\"token\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pinpost_attempts_total{channel=\"sms\",outcome=\"submitted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pinpost_deliveries{state=\"delivered\",channel=\"sms\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pinpost_channel_up{channel=\"sms\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(&pin) && !metrics.contains(MSISDN));
    assert!(!d.proc.log().contains(&pin));
}

#[test]
fn user_restriction_and_expiry() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let mut body = voucher_body("*", "1000", false);
    body["user_restriction"] = json!({"msisdn_required": true, "min_age": 20, "countries": ["JP"]});
    body["attributes"] = json!({"category": "games"});
    let (id, pin) = issue_and_receive(&d, &smsc, "u-1", &body);
    let v = get_voucher(&d, &id).body;
    assert_eq!(v["user_restriction"]["countries"], json!(["JP"]));
    assert_eq!(v["attributes"]["category"], "games");
    let try_with = |order: &str, extra: Value| {
        let mut b =
            json!({"pin": pin, "amount": {"value": "1000", "currency": "JPY"}, "order_ref": order});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        http(
            "POST",
            &format!("{}/v1/redemptions", d.base),
            Some(SHOP2_TOKEN),
            &[],
            Some(&b.to_string()),
        )
    };
    let cases = [
        (
            json!({"customer": {"age": 30, "country": "JP"}}),
            "customer_msisdn_mismatch",
        ),
        (
            json!({"customer_msisdn": "090-9999-0000", "customer": {"age": 30, "country": "JP"}}),
            "customer_msisdn_mismatch",
        ),
        (
            json!({"customer_msisdn": "090-1234-5678", "customer": {"age": 19, "country": "JP"}}),
            "customer_age_restricted",
        ),
        (
            json!({"customer_msisdn": "090-1234-5678", "customer": {"age": 30, "country": "US"}}),
            "customer_country_restricted",
        ),
    ];
    for (i, (extra, code)) in cases.into_iter().enumerate() {
        let r = try_with(&format!("u-{i}"), extra);
        assert_eq!(r.status, 402, "{}", r.raw);
        assert_eq!(r.body["error"]["code"], code, "{}", r.raw);
    }
    let usd = http(
        "POST",
        &format!("{}/v1/redemptions", d.base),
        Some(SHOP2_TOKEN),
        &[],
        Some(&json!({"pin": pin, "amount": {"value": "1000", "currency": "USD"}, "order_ref": "u-usd"}).to_string()),
    );
    assert_eq!(usd.body["error"]["code"], "currency_mismatch");
    // National format, normalised with the configured region: the subscriber himself.
    let ok = try_with(
        "u-ok",
        json!({"customer_msisdn": "090-1234-5678", "customer": {"age": 20, "country": "JP"}}),
    );
    assert_eq!(ok.status, 201, "{}", ok.raw);

    // A voucher that expires: the sweep ends it and redemption is declined.
    let mut short = voucher_body("shop-1", "700", false);
    short["ttl"] = json!("2s");
    let (sid, spin) = issue_and_receive(&d, &smsc, "u-2", &short);
    wait_voucher_state(&d, &sid, "expired");
    let late = redeem(&d, SHOP1_TOKEN, &spin, "700", "u-late");
    assert_eq!(
        late.body["error"]["code"], "voucher_expired",
        "{}",
        late.raw
    );
    assert_eq!(get_voucher(&d, &sid).body["remaining"]["value"], "0");
    let bad = issue(
        &d,
        "u-3",
        &json!({"msisdn": "+819012345678", "amount": {"value": "-1", "currency": "JPY"},
        "payee": "shop-1", "funding": {"source": "cash", "institution": "x"}}),
    );
    assert_eq!(bad.status, 422, "{}", bad.raw);
}
