//! systemd integration: the notify protocol spoken by the real daemon, and the shipped
//! unit checked by `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Datagrams received on `sock` until `want` shows up (or the timeout), all of them.
fn collect_until(sock: &UnixDatagram, want: &str, timeout: Duration, got: &mut Vec<String>) {
    let deadline = Instant::now() + timeout;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !got.iter().any(|m| m.lines().any(|l| l == want)) {
        assert!(
            Instant::now() < deadline,
            "no {want} within {timeout:?}; got {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn notify_ready_watchdog_and_stopping() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000");
    let mut proc = Proc::spawn(cmd);
    let mut got = Vec::new();
    collect_until(&sock, "READY=1", Duration::from_secs(30), &mut got);
    // Logged just before READY=1 is sent, once no channel reports itself down.
    proc.wait_line("every channel is bound", Duration::from_secs(5));
    // Pings at half the watchdog period: several within a second.
    let start = got.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got[start..]
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "watchdog pings missing: {got:?}");
        let mut more = Vec::new();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            more.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got.extend(more);
    }
    let status = proc.sigterm();
    assert!(status.success(), "{status:?}");
    collect_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut got);
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/pinpost.service"
    ))
    .unwrap()
    .replace("/usr/bin/pinpost", BIN);
    let path = dir.path().join("pinpost.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // verify exits 0 on unknown keys and bad values too; it only warns. None is allowed.
    assert!(err.trim().is_empty(), "systemd-analyze warns: {err}");

    // The same check does catch a broken unit.
    std::fs::write(
        &path,
        "[Service]\nType=notifyy\nExecStart=/bin/true\nBogus=1\n",
    )
    .unwrap();
    let bad = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&bad.stderr).trim().is_empty());
}

/// The values of `key=` lines in the unit's text.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_reference_config_fits_the_unit() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/deploy/pinpost.service")).unwrap();
    let tmpfiles = std::fs::read_to_string(format!("{root}/deploy/pinpost.tmpfiles")).unwrap();
    let cfg = pinpost::config::Config::load(
        std::path::Path::new(&format!("{root}/config/pinpost.toml")),
        Vec::new(),
    )
    .unwrap();

    // The unit starts the packaged binary on the packaged config.
    for exec in ["ExecStartPre", "ExecStart"] {
        let v = unit_values(&unit, exec);
        assert_eq!(v.len(), 1, "{exec}");
        assert!(v[0].starts_with("/usr/bin/pinpost "), "{exec}={}", v[0]);
        assert!(
            v[0].ends_with(" --config /etc/pinpost/pinpost.toml"),
            "{exec}={}",
            v[0]
        );
    }
    assert_eq!(
        unit_values(&unit, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );

    // The database lives in the StateDirectory, which tmpfiles creates for the user.
    assert_eq!(unit_values(&unit, "StateDirectory"), ["pinpost"]);
    assert_eq!(unit_values(&unit, "WorkingDirectory"), ["/var/lib/pinpost"]);
    assert!(cfg.storage_path().unwrap().starts_with("/var/lib/pinpost/"));
    assert!(tmpfiles.contains("d /var/lib/pinpost 0750 pinpost pinpost"));

    // Every secret the config reads from the credentials directory is a LoadCredential
    // of the unit, whose source lies in the root-only credentials directory.
    let credentials: Vec<(&str, &str)> = unit_values(&unit, "LoadCredential")
        .into_iter()
        .map(|v| v.split_once(':').unwrap())
        .collect();
    let mut from_credentials = vec![cfg.secrets.pin_key_file.clone()];
    for c in &cfg.channels {
        if let pinpost::config::ChannelConfig::Smpp(s) = c {
            from_credentials.extend(s.password_file.clone());
        }
    }
    assert_eq!(from_credentials.len(), 2);
    for path in &from_credentials {
        let name = path
            .strip_prefix("/run/credentials/pinpost.service/")
            .unwrap_or_else(|_| panic!("{} is not a credential of the unit", path.display()))
            .to_str()
            .unwrap();
        let (_, source) = credentials
            .iter()
            .find(|(id, _)| *id == name)
            .unwrap_or_else(|| panic!("no LoadCredential={name}:… in the unit"));
        assert!(
            source.starts_with("/etc/pinpost/credentials/"),
            "{name}: {source}"
        );
    }
    assert!(tmpfiles.contains("d /etc/pinpost/credentials 0700 root root"));

    // Token and callback-secret files are read again on reload: under /etc/pinpost,
    // which the service's group may read.
    for t in &cfg.api.tokens {
        for f in t.token_file.iter().chain(&t.callback_secret_file) {
            assert!(f.starts_with("/etc/pinpost/"), "{}", f.display());
        }
    }
    assert!(tmpfiles.contains("d /etc/pinpost 0750 root pinpost"));
}
