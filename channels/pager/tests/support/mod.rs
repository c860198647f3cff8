//! Shared by the pager tests: third-party processes (socat) and a log capture.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The repository's `peers/pager` directory.
pub fn peer_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers/pager");
    dir.canonicalize().unwrap_or(dir)
}

/// Panic with an install hint when `socat` is missing.
pub fn require_socat() {
    match Command::new("socat").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "socat is needed for the pager tests (pty pairs, TLS in front of the SNPP peer) and \
             was not found: install it (Debian/Ubuntu: `apt-get install socat`)"
        ),
    }
}

/// A running socat; killed (by its pid) on drop.
pub struct Socat {
    child: Child,
    /// What socat reported: the two pty paths, or the listening port.
    pub ptys: Vec<String>,
    pub port: Option<u16>,
}

impl Socat {
    fn spawn(args: &[String], want_ptys: usize, want_port: bool) -> Socat {
        require_socat();
        let mut child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn socat");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so socat never blocks on a full pipe.
                    continue;
                }
            }
        });
        let mut ptys = Vec::new();
        let mut port = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ptys.len() < want_ptys || (want_port && port.is_none()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("socat {args:?} did not start"));
            if let Some(p) = line.split("PTY is ").nth(1) {
                ptys.push(p.trim().to_owned());
            }
            if let Some(addr) = line.split("listening on AF=2 ").nth(1) {
                port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        Socat { child, ptys, port }
    }

    /// Two connected ptys, raw, no echo.
    pub fn pty_pair() -> Socat {
        Socat::spawn(
            &["pty,raw,echo=0".to_owned(), "pty,raw,echo=0".to_owned()],
            2,
            false,
        )
    }

    /// A TLS listener on a free loopback port that forwards to `127.0.0.1:target`.
    pub fn tls_proxy(target: u16) -> Socat {
        let tls = peer_dir().join("tls");
        let listen = format!(
            "OPENSSL-LISTEN:0,bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            tls.join("server.pem").display(),
            tls.join("server-key.pem").display()
        );
        Socat::spawn(&[listen, format!("TCP:127.0.0.1:{target}")], 0, true)
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything logged through `tracing` on this thread while the guard lives, at every level.
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Works with `#[tokio::test]` (current-thread): spawned tasks run on this thread.
    pub fn start() -> LogCapture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        LogCapture {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}
