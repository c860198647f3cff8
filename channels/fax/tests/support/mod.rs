//! Shared helpers: decoders and tools written elsewhere, used as oracles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pinpost_fax::page::{Bitmap, Resolution};

/// Fail (never skip) when a tool the proof depends on is missing.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed; these tests need it as an independent oracle. \
             Install it with: apt-get install -y {package}"
        )
    })
}

/// Run a tool with a time bound; panics with its output when it fails.
pub fn run(cmd: &mut Command, limit: Duration) -> (String, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

struct Rows {
    width: u32,
    rows: Vec<Vec<u32>>,
}

impl hayro_ccitt::Decoder for Rows {
    fn push_row(&mut self, changes: &[u32]) {
        let _ = self.width;
        self.rows.push(changes.to_vec());
    }
}

/// Decode 1-D MH data with hayro-ccitt (strict), `lsb_first` data being bit-reversed first.
pub fn hayro_decode(data: &[u8], width: u32, rows: u32, lsb_first: bool) -> Bitmap {
    let msb: Vec<u8> = if lsb_first {
        data.iter().map(|b| b.reverse_bits()).collect()
    } else {
        data.to_vec()
    };
    let settings = hayro_ccitt::DecodeSettings {
        columns: width,
        rows,
        end_of_block: true,
        end_of_line: true,
        rows_are_byte_aligned: false,
        encoding: hayro_ccitt::EncodingMode::Group3_1D,
        strict: true,
    };
    let mut ctx = hayro_ccitt::DecoderContext::new(settings);
    let mut sink = Rows {
        width,
        rows: Vec::new(),
    };
    hayro_ccitt::decode(&msb, &mut sink, &mut ctx).expect("hayro-ccitt decodes our MH data");
    let mut bmp = Bitmap::new(width, sink.rows.len() as u32);
    for (y, changes) in sink.rows.iter().enumerate() {
        let mut edges: Vec<u32> = changes.clone();
        if edges.len() % 2 == 1 {
            edges.push(width);
        }
        for pair in edges.chunks(2) {
            for x in pair[0]..pair[1] {
                bmp.set(x as i32, y as i32);
            }
        }
    }
    bmp
}

/// Row-for-row comparison with a readable failure.
pub fn assert_same_rows(got: &Bitmap, want: &Bitmap) {
    assert_eq!(got.width(), want.width(), "width");
    assert_eq!(got.height(), want.height(), "row count");
    for y in 0..want.height() {
        assert!(got.row(y) == want.row(y), "row {y} differs");
    }
}

/// libtiff's fax2tiff on raw LSB-first MH page data; returns the TIFF path.
pub fn fax2tiff(dir: &Path, raw: &[u8], resolution: Resolution, stretch: bool) -> PathBuf {
    let tool = require_tool("fax2tiff", "libtiff-tools");
    let raw_path = dir.join("page.raw");
    std::fs::write(&raw_path, raw).unwrap();
    let tif = dir.join(if stretch {
        "page-stretched.tif"
    } else {
        "page.tif"
    });
    let mut cmd = Command::new(tool);
    cmd.args(["-3", "-1", "-L", "-R"])
        .arg(resolution.lines_per_inch().to_string())
        .args(["-X", "1728"]);
    if stretch {
        cmd.arg("-s");
    }
    cmd.arg("-o").arg(&tif).arg(&raw_path);
    run(&mut cmd, Duration::from_secs(30));
    tif
}

/// Width and length of a TIFF as libtiff's tiffinfo reports them.
pub fn tiffinfo_size(tif: &Path) -> (u32, u32, String) {
    let tool = require_tool("tiffinfo", "libtiff-tools");
    let (out, _) = run(Command::new(tool).arg(tif), Duration::from_secs(30));
    let num_after = |key: &str| -> u32 {
        let at = out
            .find(key)
            .unwrap_or_else(|| panic!("tiffinfo shows no {key:?}:\n{out}"));
        out[at + key.len()..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unreadable {key:?} in:\n{out}"))
    };
    (num_after("Image Width:"), num_after("Image Length:"), out)
}

/// Tesseract's reading of an image (`--psm 6`).
pub fn ocr(image: &Path) -> String {
    let tool = require_tool("tesseract", "tesseract-ocr tesseract-ocr-eng");
    let (out, _) = run(
        Command::new(tool)
            .arg(image)
            .arg("stdout")
            .args(["--psm", "6"]),
        Duration::from_secs(120),
    );
    out
}

/// Only the digits of `s`.
pub fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// A Japanese dial plan (country code 81, trunk prefix 0, international prefix 010).
pub fn japan() -> pinpost_fax::DialPlan {
    pinpost_fax::DialPlan {
        prefix: String::new(),
        country_code: Some("81".into()),
        national_prefix: "0".into(),
        international_prefix: "010".into(),
        tone: true,
    }
}

/// A channel config for tests: the given devices, short redial delays and timeouts.
pub fn test_config(devices: Vec<String>) -> pinpost_fax::FaxConfig {
    let mut cfg = pinpost_fax::FaxConfig::new("fax-test", devices);
    cfg.local_id = "+81 3 0000 0000".into();
    cfg.dial_plan = japan();
    cfg.redial = pinpost_fax::RedialPolicy {
        max_dials: 2,
        delays: vec![Duration::from_millis(20)],
    };
    cfg.timeouts.dial = Duration::from_secs(10);
    cfg.timeouts.page_start = Duration::from_secs(10);
    cfg.timeouts.page_done = Duration::from_secs(10);
    cfg.timeouts.hangup = Duration::from_secs(5);
    cfg.queue_timeout = Duration::from_secs(10);
    cfg.reopen_min = Duration::from_millis(50);
    cfg.reopen_max = Duration::from_millis(200);
    cfg.drain_timeout = Duration::from_secs(10);
    cfg
}

/// Wait (bounded) until the channel reports Up.
pub async fn wait_up(channel: &pinpost_fax::FaxChannel) {
    use pinpost_channel_core::Channel;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !channel.health().await.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fax channel never came up: {:?}",
            channel.health().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Await `f` for at most a minute (real time), failing the test otherwise.
pub async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("no outcome within 60 s")
}
