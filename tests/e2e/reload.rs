//! SIGHUP: the daemon reads its config file again, swaps API tokens, templates and TPS, and
//! names what takes a restart; an invalid file changes nothing.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

const ROTATED_TOKEN: &str = "e2e-billing-token-rotated-0123456789";
const OLD_TOKEN: &str = "e2e-billing-token-0123456789abcdef";

fn sighup(proc: &Proc) {
    let ok = Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// `GET /v1/deliveries/{id}` with `token`: its status.
fn read_with(d: &Daemon, id: &str, token: &str) -> u16 {
    http(
        "GET",
        &format!("{}/v1/deliveries/{id}", d.base),
        Some(token),
        &[],
        None,
    )
    .status
}

/// Poll (bounded) until `f` holds.
fn wait_until(what: &str, timeout: Duration, d: &Daemon, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "not {what} within {timeout:?}:\n{}",
            tail(&d.proc.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Datagrams on `sock` until one has the line `want`, appended to `got`.
fn notified(sock: &UnixDatagram, want: &str, got: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let start = got.len();
    while !got[start..].iter().any(|m| m.lines().any(|l| l == want)) {
        assert!(Instant::now() < deadline, "no {want}; got {got:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

/// Start the daemon on `config` with `NOTIFY_SOCKET` set to `sock`.
fn start_notified(dir: &Path, config: &Path, sock: &Path) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .env("NOTIFY_SOCKET", sock);
    let mut proc = Proc::spawn(cmd);
    let url = proc.wait_line("listening on ", Duration::from_secs(30));
    Daemon {
        proc,
        base: url.split_whitespace().next().unwrap().to_owned(),
        token: OLD_TOKEN.into(),
        dir: dir.to_owned(),
        config: config.to_owned(),
    }
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} in the config");
    text.replacen(from, to, 1)
}

#[test]
fn sighup_swaps_tokens_templates_and_tps_and_names_what_needs_a_restart() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut d = start_notified(dir.path(), &config, &sock_path);
    let mut got = Vec::new();
    notified(&sock, "READY=1", &mut got);

    let before = d.deliver(
        "reload-1",
        &delivery("+819012340001", &pin_for(1)),
        &["delivered"],
        Duration::from_secs(30),
    );
    let id = before["id"].as_str().unwrap().to_owned();
    smsc.wait_messages(1, Duration::from_secs(10));
    let texts = smsc.texts();
    assert_eq!(texts.len(), 1);
    assert!(texts[0].starts_with("PIN "), "{texts:?}");

    // A rotated billing token (a new file), a new template and rate, and two keys that
    // only a restart applies.
    std::fs::write(dir.path().join("billing-rotated.token"), ROTATED_TOKEN).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = replace_once(&text, "/billing.token\"", "/billing-rotated.token\"");
    let text = replace_once(
        &text,
        "response_timeout = \"2s\"",
        "response_timeout = \"2s\"\nmax_tps = 1000\ntemplate = \"Reloaded PIN {pin}\"",
    );
    let text = replace_once(
        &text,
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_body_bytes = 32768",
    );
    let text = replace_once(&text, "[delivery]\n", "[delivery]\nmax_attempts = 9\n");
    std::fs::write(&config, text).unwrap();
    sighup(&d.proc);

    wait_until(
        "the rotated token accepted",
        Duration::from_secs(20),
        &d,
        || read_with(&d, &id, ROTATED_TOKEN) == 200,
    );
    assert_eq!(read_with(&d, &id, OLD_TOKEN), 401);
    // Untouched clients keep working.
    assert_eq!(
        d.admin("GET", &format!("/v1/deliveries/{id}"), None).status,
        200
    );

    let summary = d
        .proc
        .wait_line("configuration reloaded: ", Duration::from_secs(10));
    assert!(
        summary.contains("4 API tokens loaded")
            && summary.contains("templates changed for sms")
            && summary.contains("max_tps changed for sms=1000"),
        "{summary}"
    );
    let restart = d.proc.wait_line(
        "configuration changes not applied until pinpost restarts: ",
        Duration::from_secs(10),
    );
    assert_eq!(restart, "api.max_body_bytes, delivery.max_attempts");
    notified(&sock, "RELOADING=1", &mut got);
    let reloading = got.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notified(&sock, "READY=1", &mut got);

    // The next delivery uses the new template.
    d.token = ROTATED_TOKEN.into();
    d.deliver(
        "reload-2",
        &delivery("+819012340002", &pin_for(2)),
        &["delivered"],
        Duration::from_secs(30),
    );
    smsc.wait_messages(2, Duration::from_secs(10));
    let texts = smsc.texts();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[1].starts_with("Reloaded PIN "),
        "the new template is not used: {texts:?}"
    );

    // Nothing changed since: a second SIGHUP reloads and lists nothing for a restart
    // beyond what is still pending.
    sighup(&d.proc);
    wait_until(
        "a second reload logged",
        Duration::from_secs(20),
        &d,
        || {
            d.proc
            .log()
            .matches("configuration reloaded: 4 API tokens loaded; templates unchanged; max_tps unchanged")
            .count()
            == 1
        },
    );
    assert!(d.proc.sigterm().success());
}

#[test]
fn an_invalid_config_on_sighup_keeps_the_running_one() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let body = delivery("+819012340003", &pin_for(3));
    let r = d.enqueue("invalid-1", &body);
    assert_eq!(r.status, 202, "{}", r.raw);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let good = std::fs::read_to_string(&d.config).unwrap();

    // An unknown key (with a rotated token that must not be taken).
    std::fs::write(dir.path().join("billing-rotated.token"), ROTATED_TOKEN).unwrap();
    let rotated = replace_once(&good, "/billing.token\"", "/billing-rotated.token\"");
    let bad = replace_once(&rotated, "[delivery]\n", "[delivery]\nmax_atempts = 9\n");
    std::fs::write(&d.config, bad).unwrap();
    sighup(&d.proc);
    let err = d.proc.wait_line(
        "configuration reload failed; the running configuration stays in force: ",
        Duration::from_secs(20),
    );
    assert!(err.contains("max_atempts"), "{err}");

    // A token file that is no good (too short): named, nothing swapped.
    std::fs::write(dir.path().join("short.token"), "tiny").unwrap();
    let short = replace_once(&rotated, "/admin.token\"", "/short.token\"");
    std::fs::write(&d.config, short).unwrap();
    sighup(&d.proc);
    wait_until(
        "the second failure logged",
        Duration::from_secs(20),
        &d,
        || {
            d.proc
                .log()
                .lines()
                .any(|l| l.contains("configuration reload failed") && l.contains("short.token"))
        },
    );

    // Still serving, with the tokens it started with.
    assert_eq!(read_with(&d, &id, OLD_TOKEN), 200);
    assert_eq!(read_with(&d, &id, ROTATED_TOKEN), 401);
    d.wait_states(
        std::slice::from_ref(&id),
        &["delivered"],
        Duration::from_secs(30),
    );
    let r = d.enqueue("invalid-2", &delivery("+819012340004", &pin_for(4)));
    assert_eq!(r.status, 202, "{}", r.raw);
    assert!(
        !d.proc.log().contains("configuration reloaded:"),
        "{}",
        d.proc.log()
    );
    assert!(d.proc.sigterm().success());
}
