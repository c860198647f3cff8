//! The engine against a scripted peer over `tokio::io::duplex`.

use std::time::Duration;

use pinpost_modem::{DataSent, DialMode, FinalResult, Modem, ModemError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Read from the peer side until `want` has arrived (and return everything read).
async fn expect(peer: &mut DuplexStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&got).contains(want) {
        let n = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
            .await
            .expect("peer read timed out")
            .expect("peer read");
        assert!(n > 0, "engine closed before sending {want:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn pair() -> (Modem<DuplexStream>, DuplexStream) {
    let (a, b) = tokio::io::duplex(4096);
    (Modem::new(a), b)
}

#[tokio::test]
async fn ok_with_information_lines() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "AT+FCLASS=?\r").await;
        peer.write_all(b"\r\n(0,1,2,2.0)\r\n\r\nOK\r\n")
            .await
            .unwrap();
        peer
    });
    let r = m.command("AT+FCLASS=?").await.unwrap();
    assert_eq!(r.result, FinalResult::Ok);
    assert_eq!(r.lines, vec!["(0,1,2,2.0)".to_string()]);
    t.await.unwrap();
}

#[tokio::test]
async fn echo_is_dropped() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "AT+FLI=\"+81 3 0000\"\r").await;
        peer.write_all(b"AT+FLI=\"+81 3 0000\"\r\r\nOK\r\n")
            .await
            .unwrap();
        peer
    });
    let r = m.expect_ok("AT+FLI=\"+81 3 0000\"").await.unwrap();
    assert!(r.lines.is_empty(), "echo kept: {:?}", r.lines);
    t.await.unwrap();
}

#[tokio::test]
async fn noise_and_ring_are_ignored() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "ATDT0312345678\r").await;
        peer.write_all(b"\r\n\xff\xfe\x80\x01garbage\r\n\x11\r\nRING\r\n+FCO\r\n")
            .await
            .unwrap();
        peer.write_all(b"\r\n+FCI:\"REMOTE\"\r\n\x00\r\n+FIS:1,5,0,2,0,0,0,0\r\nOK\r\n")
            .await
            .unwrap();
        peer
    });
    let r = m
        .dial("0312345678", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.result, FinalResult::Ok);
    assert_eq!(
        r.lines,
        vec!["+FCO", "+FCI:\"REMOTE\"", "+FIS:1,5,0,2,0,0,0,0"]
    );
    assert!(r.has_line("+FCO"));
    assert_eq!(r.value("+FIS:"), Some("1,5,0,2,0,0,0,0"));
    t.await.unwrap();
}

#[tokio::test]
async fn answer_split_across_reads() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "AT+FDT\r").await;
        for b in b"\r\n+FCS:1,5,0,2,0,0,0,0\r\nCONN".iter().chain(b"ECT\r\n") {
            peer.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        peer
    });
    let r = m.command("AT+FDT").await.unwrap();
    assert_eq!(r.result, FinalResult::Connect(String::new()));
    assert_eq!(r.value("+FCS:"), Some("1,5,0,2,0,0,0,0"));
    t.await.unwrap();
}

#[tokio::test]
async fn lf_only_and_cr_only_framing() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "AT\r").await;
        peer.write_all(b"\n+X:1\n\rOK\r").await.unwrap();
        peer
    });
    let r = m.command("AT").await.unwrap();
    assert_eq!(r.result, FinalResult::Ok);
    assert_eq!(r.lines, vec!["+X:1"]);
    t.await.unwrap();
}

#[tokio::test]
async fn stale_input_is_not_taken_as_the_answer() {
    let (mut m, mut peer) = pair();
    peer.write_all(b"+FHS:00\r\nOK\r\n").await.unwrap();
    assert_eq!(
        m.read_line(Duration::from_secs(1)).await.unwrap(),
        "+FHS:00"
    );
    // "OK" is now buffered but belongs to the earlier exchange.
    let t = tokio::spawn(async move {
        expect(&mut peer, "AT+FXX\r").await;
        peer.write_all(b"\r\nERROR\r\n").await.unwrap();
        peer
    });
    let r = m.command("AT+FXX").await.unwrap();
    assert_eq!(r.result, FinalResult::Error);
    t.await.unwrap();
}

#[tokio::test]
async fn dial_failures() {
    for (text, want) in [
        ("BUSY", FinalResult::Busy),
        ("NO CARRIER", FinalResult::NoCarrier),
        ("NO DIALTONE", FinalResult::NoDialtone),
        ("NO ANSWER", FinalResult::NoAnswer),
    ] {
        let (mut m, mut peer) = pair();
        let t = tokio::spawn(async move {
            expect(&mut peer, "ATDP123\r").await;
            peer.write_all(format!("\r\n{text}\r\n").as_bytes())
                .await
                .unwrap();
            peer
        });
        let r = m
            .dial("123", DialMode::Pulse, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.result, want);
        t.await.unwrap();
    }
}

#[tokio::test]
async fn invalid_dial_string_writes_nothing() {
    let (mut m, mut peer) = pair();
    let err = m
        .dial("123;+FKS", DialMode::Tone, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ModemError::InvalidDialString));
    let err = m.command("AT\rATH").await.unwrap_err();
    assert!(matches!(err, ModemError::InvalidCommand));
    drop(m);
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "wrote {rest:?}");
}

#[tokio::test]
async fn connect_then_raw_data() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "ATDT5551234\r").await;
        peer.write_all(b"\r\nCONNECT 2400/ARQ\r").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        peer.write_all(b"\nID=\r").await.unwrap();
        expect(&mut peer, "\x1bPG1\r").await;
        peer
    });
    let r = m
        .dial("5551234", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.result, FinalResult::Connect("2400/ARQ".into()));
    let mut buf = [0u8; 16];
    let mut got = Vec::new();
    while got.len() < 4 {
        let n = m.read_raw(&mut buf, Duration::from_secs(5)).await.unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"ID=\r");
    m.write_raw(b"\x1bPG1\r").await.unwrap();
    t.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timeout_keeps_partial_lines() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "ATDT1\r").await;
        peer.write_all(b"\r\n+FCO\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        peer
    });
    let err = m
        .dial("1", DialMode::Tone, Duration::from_secs(90))
        .await
        .unwrap_err();
    match err {
        ModemError::Timeout { lines, after, .. } => {
            assert_eq!(lines, vec!["+FCO"]);
            assert_eq!(after, Duration::from_secs(90));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    t.abort();
}

#[tokio::test]
async fn closed_stream() {
    let (mut m, peer) = pair();
    drop(peer);
    let err = m.command("AT").await.unwrap_err();
    assert!(
        matches!(err, ModemError::Closed | ModemError::Io(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn send_data_complete_and_interrupted() {
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();

    let (mut m, mut peer) = pair();
    let want = data.len();
    let t = tokio::spawn(async move {
        let mut got = vec![0u8; want];
        peer.read_exact(&mut got).await.unwrap();
        got
    });
    assert_eq!(
        m.send_data(&data, Duration::from_secs(5)).await.unwrap(),
        DataSent::Complete
    );
    assert_eq!(t.await.unwrap(), data);

    // The peer hangs up after 3000 bytes and keeps reading (discarding) afterwards.
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        let mut got = vec![0u8; 3000];
        peer.read_exact(&mut got).await.unwrap();
        peer.write_all(b"\r\n+FHS:43\r\n").await.unwrap();
        peer.write_all(b"\r\nOK\r\n").await.unwrap();
        let mut sink = [0u8; 1024];
        while let Ok(n) = peer.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    match m.send_data(&data, Duration::from_secs(5)).await.unwrap() {
        DataSent::Interrupted {
            written,
            lines,
            result,
        } => {
            assert!(written >= 3000 && written < data.len(), "written {written}");
            assert_eq!(lines, vec!["+FHS:43"]);
            assert_eq!(result, Some(FinalResult::Ok));
        }
        other => panic!("not interrupted: {other:?}"),
    }
    drop(m);
    t.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn escape_to_command_mode() {
    let (mut m, mut peer) = pair();
    let t = tokio::spawn(async move {
        expect(&mut peer, "+++").await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        peer.write_all(b"\r\nOK\r\n").await.unwrap();
        expect(&mut peer, "ATH0\r").await;
        peer.write_all(b"\r\nOK\r\n").await.unwrap();
        peer
    });
    let r = m.escape_to_command(Duration::from_secs(1)).await.unwrap();
    assert!(r.is_ok());
    assert!(m.hang_up().await.unwrap().is_ok());
    t.await.unwrap();
}

#[tokio::test]
async fn ring_after_connect_does_not_interrupt_the_data() {
    // Found by the modem_response fuzz target: a RING in the same read as CONNECT stayed
    // buffered and was taken for the modem interrupting the page data.
    let data = vec![0x55u8; 600];
    let (mut m, mut peer) = pair();
    let want = data.len();
    let t = tokio::spawn(async move {
        expect(&mut peer, "ATDT5551000\r").await;
        peer.write_all(b"\r\nCONNECT \rRING\r").await.unwrap();
        let mut got = vec![0u8; want];
        peer.read_exact(&mut got).await.unwrap();
        got
    });
    let r = m
        .dial("5551000", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.result, FinalResult::Connect(String::new()));
    assert_eq!(
        m.send_data(&data, Duration::from_secs(5)).await.unwrap(),
        DataSent::Complete
    );
    assert_eq!(t.await.unwrap(), data);
}
