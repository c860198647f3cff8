//! The simulator's AT dialogue, driven by the modem engine over `tokio::io::duplex`.

use std::time::Duration;

use pinpost_fax::sim::{self, Outcome, SimConfig, SimRecord};
use pinpost_modem::dle::{self, CAN, DLE, ETX};
use pinpost_modem::{DataSent, DialMode, FinalResult, Modem};
use tokio::io::DuplexStream;

fn start(cfg: SimConfig) -> (Modem<DuplexStream>, SimRecord) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let record = SimRecord::default();
    tokio::spawn(sim::serve(theirs, cfg, record.clone()));
    (Modem::new(ours), record)
}

async fn fax_mode(m: &mut Modem<DuplexStream>) {
    m.expect_ok("ATE0").await.unwrap();
    m.expect_ok("AT+FCLASS=2.0;+FLO=2;+FBO=0").await.unwrap();
    m.expect_ok("AT+FCC=1,5,0,2,0,0,0,0").await.unwrap();
}

#[tokio::test]
async fn queries_and_class_rules() {
    let (mut m, record) = start(SimConfig::default());
    // Echo is on at power-on; the engine drops it.
    let r = m.command("AT+FCLASS=?").await.unwrap();
    assert_eq!(r.lines, vec!["(0,1,2,2.0)"]);
    // Fax commands need +FCLASS=2.0.
    assert_eq!(
        m.command("AT+FCC=1,5,0,2,0,0,0,0").await.unwrap().result,
        FinalResult::Error
    );
    assert_eq!(
        m.command("AT+FDT").await.unwrap().result,
        FinalResult::Error
    );
    fax_mode(&mut m).await;
    assert_eq!(m.command("AT+FCLASS?").await.unwrap().lines, vec!["2.0"]);
    assert_eq!(
        m.command("AT+FCC=?").await.unwrap().lines,
        vec!["(0,1),(0-5),(0-2),(0-2),(0-3),(0),(0),(0-7)"]
    );
    assert_eq!(
        m.command("AT+FCC?").await.unwrap().lines,
        vec!["1,5,0,2,0,0,0,0"]
    );
    m.expect_ok("AT+FLI=\"+81 3 0000 0000\"").await.unwrap();
    assert_eq!(
        m.command("AT+FLI?").await.unwrap().lines,
        vec!["\"+81 3 0000 0000\""]
    );
    assert_eq!(
        m.command("AT+FLI=\"012345678901234567890\"")
            .await
            .unwrap()
            .result,
        FinalResult::Error
    );
    assert_eq!(
        m.command("AT+FBO=7").await.unwrap().result,
        FinalResult::Error
    );
    assert_eq!(
        m.command("AT+FXYZ=1").await.unwrap().result,
        FinalResult::Error
    );
    // No call: +FDT is refused.
    assert_eq!(
        m.command("AT+FDT").await.unwrap().result,
        FinalResult::Error
    );
    // ATZ resets the class.
    m.expect_ok("ATZ").await.unwrap();
    assert_eq!(m.command("AT+FCLASS?").await.unwrap().lines, vec!["0"]);
    assert!(
        record
            .commands()
            .contains(&"AT+FCLASS=2.0;+FLO=2;+FBO=0".to_string())
    );
}

#[tokio::test]
async fn garbage_before_at_is_skipped() {
    let (mut m, _) = start(SimConfig::default());
    m.write_raw(b"\x00\xff\x10\x03xyz").await.unwrap();
    let r = m.command("ATE0").await.unwrap();
    assert!(r.is_ok());
}

#[tokio::test]
async fn dial_outcomes() {
    let cfg = SimConfig::default()
        .with("1", Outcome::Busy)
        .with("2", Outcome::NoAnswer)
        .with("3", Outcome::NoCarrier)
        .with("4", Outcome::NoDialtone)
        .with("5", Outcome::HangupAtDial(0x11));
    let (mut m, record) = start(cfg);
    // Not in fax class: a data call finds no carrier.
    let r = m
        .dial("9", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.result, FinalResult::NoCarrier);
    fax_mode(&mut m).await;
    for (n, want) in [
        ("1", FinalResult::Busy),
        ("2", FinalResult::NoAnswer),
        ("3", FinalResult::NoCarrier),
        ("4", FinalResult::NoDialtone),
    ] {
        assert_eq!(
            m.dial(n, DialMode::Tone, Duration::from_secs(5))
                .await
                .unwrap()
                .result,
            want
        );
    }
    let r = m
        .dial("5", DialMode::Pulse, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (r.result.clone(), r.value("+FHS:")),
        (FinalResult::Ok, Some("11"))
    );
    let r = m
        .dial("0312345678", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.is_ok() && r.has_line("+FCO"), "{r:?}");
    assert_eq!(r.value("+FCI:"), Some("\"+81 3 5555 0100\""));
    assert_eq!(r.value("+FIS:"), Some("1,5,0,2,0,0,0,0"));
    assert_eq!(record.calls().len(), 7, "the class 0 dial included");
}

#[tokio::test]
async fn two_pages_mps_then_eop() {
    let (mut m, record) = start(SimConfig::default());
    fax_mode(&mut m).await;
    m.dial("0312345678", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    for (i, ppm) in [(1u8, b','), (2, b'.')] {
        let r = m.command("AT+FDT").await.unwrap();
        assert_eq!(r.result, FinalResult::Connect(String::new()));
        assert_eq!(r.value("+FCS:"), Some("1,5,0,2,0,0,0,0"));
        let data = vec![i, DLE, 0x55, DLE, DLE];
        let mut wire = dle::stuff(&data);
        wire.extend_from_slice(&dle::command(ppm));
        assert_eq!(
            m.send_data(&wire, Duration::from_secs(5)).await.unwrap(),
            DataSent::Complete
        );
        let r = m.read_response(Duration::from_secs(5)).await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.value("+FPS:"), Some("1"));
    }
    let r = m.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.value("+FHS:"), Some("00"));
    let pages = record.pages();
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].data, vec![1, DLE, 0x55, DLE, DLE]);
    assert_eq!(pages[0].post_page, Some(b','));
    assert!(pages[1].complete());
}

#[tokio::test]
async fn bad_dle_command_and_cancel() {
    let (mut m, record) = start(SimConfig::default());
    fax_mode(&mut m).await;
    m.dial("1", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    m.command("AT+FDT").await.unwrap();
    m.write_raw(&[0x01, DLE, b'x']).await.unwrap();
    let r = m.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.value("+FHS:"), Some("44"));

    m.dial("1", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    m.command("AT+FDT").await.unwrap();
    m.write_raw(&[0x01, DLE, CAN]).await.unwrap();
    let r = m.read_response(Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.value("+FHS:"), Some("02"));

    // <DLE><ETX>: data ended without a post-page message; the call goes on.
    m.dial("1", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    m.command("AT+FDT").await.unwrap();
    m.write_raw(&[0x02, DLE, ETX]).await.unwrap();
    assert!(
        m.read_response(Duration::from_secs(5))
            .await
            .unwrap()
            .is_ok()
    );
    let r = m.command("AT+FKS").await.unwrap();
    assert_eq!(r.value("+FHS:"), Some("02"));
    let pages = record.pages();
    assert_eq!(
        pages.iter().map(|p| p.post_page).collect::<Vec<_>>(),
        vec![None, None, Some(ETX)]
    );
}

#[tokio::test(start_paused = true)]
async fn line_rate_is_enforced() {
    let (mut m, _) = start(SimConfig {
        line_rate: Some(14_400),
        ..SimConfig::default()
    });
    fax_mode(&mut m).await;
    m.dial("1", DialMode::Tone, Duration::from_secs(5))
        .await
        .unwrap();
    m.command("AT+FDT").await.unwrap();
    let mut wire = vec![0u8; 18_000];
    wire.extend_from_slice(&dle::command(b'.'));
    let t0 = tokio::time::Instant::now();
    m.send_data(&wire, Duration::from_secs(60)).await.unwrap();
    assert!(
        m.read_response(Duration::from_secs(60))
            .await
            .unwrap()
            .is_ok()
    );
    // 18 000 bytes at 14 400 bit/s: 10 s.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}"
    );
}
