//! Modem responses: the input is what a modem answers, one segment per command (or per
//! block of page data). The AT engine must not panic or hang, and what it reports must be
//! clean: information lines printable, trimmed, neither a final result code nor `RING`.
//! Every final result code prints back to itself. Then DLE un-stuffing: of the raw input,
//! and of the input stuffed, which must come back whole wherever the stream is split.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pinpost_fuzz::with_scripted_peer;
use pinpost_modem::dle::{self, DLE, Unstuffer};
use pinpost_modem::{DataSent, DialMode, FinalResult, Modem, ModemError, Response};
use tokio::io::DuplexStream;

fn check_lines(lines: &[String]) {
    for line in lines {
        assert!(!line.is_empty() && line.bytes().all(|b| (0x20..0x7f).contains(&b)));
        assert_eq!(line.trim(), line);
        assert_eq!(FinalResult::parse(line), None, "{line:?}");
        assert!(!line.eq_ignore_ascii_case("RING"));
    }
}

fn check_result(result: &FinalResult) {
    assert_eq!(
        FinalResult::parse(&result.to_string()).as_ref(),
        Some(result)
    );
}

fn check(r: &Response) {
    check_lines(&r.lines);
    check_result(&r.result);
}

fn check_err(e: &ModemError) {
    match e {
        ModemError::Timeout { lines, .. } => check_lines(lines),
        ModemError::Rejected { response, .. } => check(response),
        _ => {}
    }
}

async fn session(stream: DuplexStream) -> Result<(), ModemError> {
    let mut modem = Modem::new(stream);
    check(&modem.command("ATE0V1").await?);
    check(&modem.command("AT+FCLASS=2.0").await?);
    let r = modem
        .dial("5551000", DialMode::Tone, Duration::from_secs(60))
        .await?;
    check(&r);
    if matches!(r.result, FinalResult::Connect(_)) {
        let mut data = dle::stuff(&[0x00, 0x10, 0x0d, 0xff, 0x11, 0x10]);
        data.extend_from_slice(&dle::command(b'.'));
        match modem.send_data(&data, Duration::from_secs(30)).await? {
            DataSent::Complete => check(&modem.read_response(Duration::from_secs(30)).await?),
            DataSent::Interrupted {
                lines,
                result,
                written,
            } => {
                assert!(written <= data.len());
                check_lines(&lines);
                if let Some(result) = &result {
                    check_result(result);
                }
            }
        }
        let mut buf = [0u8; 64];
        let _ = modem.read_raw(&mut buf, Duration::from_secs(1)).await;
        check(&modem.escape_to_command(Duration::from_secs(1)).await?);
    }
    check(&modem.hang_up().await?);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let result = with_scripted_peer(
        data,
        |sent| sent.ends_with(b"\r") || sent.ends_with(&[DLE, b'.']) || sent.ends_with(b"+++"),
        session,
    );
    if let Err(e) = &result {
        check_err(e);
    }

    // Un-stuffing the raw input stops at its first command, if any.
    let mut out = Vec::new();
    if let Some((_, used)) = Unstuffer::with_sub_as_double_dle().feed(data, &mut out) {
        assert!(used <= data.len());
    }
    // Stuffed and ended with <DLE><ETX>, the input comes back whole, split anywhere.
    let mut wire = dle::stuff(data);
    wire.extend_from_slice(&dle::command(dle::ETX));
    wire.extend_from_slice(b"OK\r");
    let split = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut unstuffer = Unstuffer::new();
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for chunk in wire.chunks(split) {
        if let Some((command, used)) = unstuffer.feed(chunk, &mut out) {
            end = Some((command, offset + used));
            break;
        }
        offset += chunk.len();
    }
    assert_eq!(end, Some((dle::ETX, wire.len() - 3)));
    assert_eq!(out, data);
});
