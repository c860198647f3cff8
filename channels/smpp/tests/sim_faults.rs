//! Fault injection of the loopback SMSC.

mod sim_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pinpost_smpp::sim::SimConfig;
use rusmpp::{CommandId, CommandStatus, values::MessageState};
use sim_support::*;

/// Pipelines `n` submits and returns the status of each, by sequence number order.
async fn statuses(client: &mut Client, n: usize) -> Vec<CommandStatus> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        seqs.push(
            client
                .send(submit(&format!("8190{i}"), &gsm("t"), 0, 0))
                .await,
        );
    }
    let mut got = std::collections::HashMap::new();
    while got.len() < n {
        let c = client.recv().await;
        if c.id() == CommandId::SubmitSmResp {
            got.insert(c.sequence_number(), c.status());
        }
    }
    seqs.iter().map(|s| got[s]).collect()
}

#[tokio::test]
async fn throttle_fraction_is_respected_and_seeded() {
    let cfg = SimConfig {
        throttle_fraction: 0.3,
        receipts: false,
        seed: 42,
        ..SimConfig::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sim = start(cfg.clone()).await;
        let mut client = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
        let st = statuses(&mut client, 2000).await;
        let throttled = st
            .iter()
            .filter(|s| **s == CommandStatus::EsmeRthrottled)
            .count();
        assert!(
            (500..=700).contains(&throttled),
            "{throttled} of 2000 throttled at fraction 0.3"
        );
        assert!(
            st.iter()
                .all(|s| matches!(s, CommandStatus::EsmeRok | CommandStatus::EsmeRthrottled))
        );
        assert_eq!(sim.stats.throttled(), throttled as u64);
        assert_eq!(sim.stats.messages(), 2000 - throttled as u64);
        runs.push(st);
        sim.stop().await;
    }
    assert_eq!(runs[0], runs[1], "same seed, different throttling");
}

#[tokio::test]
async fn every_nth_submit_is_left_unanswered() {
    let sim = start(SimConfig {
        no_answer_every: Some(3),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let mut sent = Vec::new();
    for i in 0..9 {
        sent.push(
            client
                .send(submit("8190", &gsm(&format!("m{i}")), 0, 0))
                .await,
        );
    }
    let mut answered = BTreeSet::new();
    let mut receipts = 0;
    // 6 responses and 9 receipts (unanswered messages were accepted).
    while answered.len() < 6 || receipts < 9 {
        let c = client.recv().await;
        match c.id() {
            CommandId::SubmitSmResp => {
                assert_eq!(c.status(), CommandStatus::EsmeRok);
                answered.insert(c.sequence_number());
            }
            CommandId::DeliverSm => {
                receipts += 1;
                client.ack(c.sequence_number()).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let missing: Vec<u32> = sent
        .iter()
        .copied()
        .filter(|s| !answered.contains(s))
        .collect();
    assert_eq!(missing, vec![sent[2], sent[5], sent[8]]);
    assert!(
        client
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(sim.stats.unanswered(), 3);
    assert_eq!(sim.stats.messages(), 9);
    sim.stop().await;
}

#[tokio::test]
async fn connection_drops_at_the_nth_pdu() {
    let sim = start(SimConfig {
        drop_after_pdus: Some(3),
        ..SimConfig::default()
    })
    .await;
    // PDU 1 bind, PDU 2 submit (answered), PDU 3 submit: read, not answered, connection closed.
    let mut client = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    let seq = client.send(submit("8190", &gsm("one"), 0, 0)).await;
    let (resp, _) = client.submit_resp(seq).await;
    assert_eq!(resp.status(), CommandStatus::EsmeRok);
    client.send(submit("8190", &gsm("two"), 0, 0)).await;
    assert!(client.closed_within(STEP).await, "connection not dropped");
    assert_eq!(sim.stats.dropped_connections(), 1);
    assert_eq!(sim.stats.submits(), 1, "the N-th PDU was processed");
    assert_eq!(sim.stats.messages(), 1);
    // Every connection gets its own count.
    let mut again = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    let seq = again.send(submit("8190", &gsm("three"), 0, 0)).await;
    assert_eq!(
        again.submit_resp(seq).await.0.status(),
        CommandStatus::EsmeRok
    );
    sim.stop().await;
}

#[tokio::test]
async fn rejected_and_undeliverable_destinations() {
    let sim = start(SimConfig {
        reject_prefix: vec!["999".into()],
        undeliverable_prefix: vec!["8170".into()],
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let seq = client.send(submit("99912345", &gsm("nope"), 0, 0)).await;
    let (resp, _) = client.submit_resp(seq).await;
    assert_eq!(resp.status(), CommandStatus::EsmeRinvdstadr);
    assert!(resp.pdu().is_none(), "error response carries a body");

    let seq = client
        .send(submit("817012345678", &gsm("lost phone"), 0, 0))
        .await;
    let (resp, _) = client.submit_resp(seq).await;
    assert_eq!(resp.status(), CommandStatus::EsmeRok);
    let receipt = client.next_deliver().await;
    let text = text_of(&receipt);
    assert!(text.contains("dlvrd:000"), "{text}");
    assert!(text.contains("stat:UNDELIV err:001"), "{text}");
    assert_eq!(message_state(&receipt), Some(MessageState::Undeliverable));
    assert_eq!(receipted_id(&receipt), Some(message_id(&resp)));
    assert!(
        client
            .recv_within(Duration::from_millis(200))
            .await
            .is_none()
    );
    assert_eq!(sim.stats.rejected(), 1);
    assert_eq!(sim.stats.messages(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn responses_can_be_delayed() {
    let sim = start(SimConfig {
        response_delay: Duration::from_millis(250),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let started = Instant::now();
    let seq = client.send(submit("8190", &gsm("slow"), 0, 0)).await;
    let (resp, early) = client.submit_resp(seq).await;
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
    assert!(early.is_empty(), "receipt overtook the delayed response");
    let receipt = client.next_deliver().await;
    assert_eq!(receipted_id(&receipt), Some(message_id(&resp)));
    sim.stop().await;
}

#[tokio::test]
async fn garbage_on_one_connection_does_not_hurt_others() {
    let sim = start(SimConfig::default()).await;
    let mut good = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0, 0, 0, 16, 0, 0, 0, 4][..],
    ] {
        let mut bad = Client::connect(sim.addr).await;
        bad.send_raw(garbage).await;
        drop(bad);
    }
    let seq = good.send(submit("8190", &gsm("still fine"), 0, 0)).await;
    let (resp, _) = good.submit_resp(seq).await;
    assert_eq!(resp.status(), CommandStatus::EsmeRok);
    assert_eq!(sim.stats.connections(), 4);
    sim.stop().await;
}

#[tokio::test]
async fn unanswered_submits_are_counted_over_the_whole_server() {
    let sim = start(SimConfig {
        no_answer_every: Some(2),
        receipts: false,
        ..SimConfig::default()
    })
    .await;
    let mut a = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    let mut b = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    a.send(submit("8190", &gsm("first"), 0, 0)).await;
    assert!(
        a.recv_within(STEP).await.is_some(),
        "the 1st submit of the server is answered"
    );
    b.send(submit("8190", &gsm("second"), 0, 0)).await;
    assert!(
        b.recv_within(Duration::from_millis(300)).await.is_none(),
        "the 2nd submit of the server (1st of this connection) was answered"
    );
    assert_eq!(sim.stats.unanswered(), 1);
    sim.stop().await;
}
