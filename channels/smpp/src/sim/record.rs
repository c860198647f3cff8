//! Complete messages: reassembly of concatenated parts and the JSON-lines record.
//!
//! The record is written by its own OS thread through a buffered writer, flushed at most
//! [`FLUSH_EVERY`] after a line arrives and on shutdown, so sessions never block on the file.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::IdBase;
use super::receipt::IdText;
use super::text::{self, Concat};

/// Longest time a recorded line stays in the buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Incomplete long messages older than this are forgotten.
const PARTIAL_TTL: Duration = Duration::from_secs(600);

/// At most this many incomplete long messages are kept.
const MAX_PARTIALS: usize = 65_536;

/// One accepted submit_sm, as the record needs it.
pub(crate) struct Part<'a> {
    pub system_id: &'a str,
    pub id: u64,
    pub source: &'a str,
    pub dest: &'a str,
    pub service_type: &'a str,
    pub esm_class: u8,
    pub data_coding: u8,
    pub ussd_op: Option<u8>,
    /// Concatenation reference (UDH or SAR TLVs); `None` for a single message.
    pub concat: Option<Concat>,
    /// User data without the UDH.
    pub payload: &'a [u8],
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct PartialKey {
    system_id: String,
    source: String,
    dest: String,
    reference: u16,
    total: u8,
}

struct Partial {
    first_seen: Instant,
    service_type: String,
    esm_class: u8,
    data_coding: u8,
    /// Indexed by part number - 1: (message id, user data).
    parts: Vec<Option<(u64, Vec<u8>)>>,
    received: usize,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MessageIds<'a> {
    One(&'a str),
    Many(Vec<String>),
}

#[derive(Serialize)]
struct Line<'a> {
    ts: &'a str,
    system_id: &'a str,
    message_id: MessageIds<'a>,
    source_addr: &'a str,
    destination_addr: &'a str,
    service_type: &'a str,
    esm_class: u8,
    data_coding: u8,
    ussd_service_op: Option<u8>,
    parts: usize,
    text: &'a str,
}

enum ToWriter {
    Line(Vec<u8>),
    Close(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// Counts complete messages and writes them to the record, if one is configured.
pub(crate) struct Messages {
    base: IdBase,
    partials: Mutex<HashMap<PartialKey, Partial>>,
    writer: Option<Mutex<mpsc::Sender<ToWriter>>>,
}

impl Messages {
    /// Opens (appends to) the record file and starts its writer thread.
    pub(crate) fn new(base: IdBase, record: Option<&Path>) -> io::Result<Self> {
        let writer = match record {
            None => None,
            Some(path) => {
                let file = OpenOptions::new().create(true).append(true).open(path)?;
                let (tx, rx) = mpsc::channel();
                std::thread::Builder::new()
                    .name("pinpost-sim-record".into())
                    .spawn(move || write_loop(file, rx))?;
                Some(Mutex::new(tx))
            }
        };
        Ok(Messages {
            base,
            partials: Mutex::new(HashMap::new()),
            writer,
        })
    }

    /// Takes one accepted part. Returns true when it completed a message.
    pub(crate) fn accept(&self, part: Part<'_>) -> bool {
        let concat = part
            .concat
            .filter(|c| c.total > 1 && part.ussd_op.is_none());
        let Some(concat) = concat else {
            if self.writer.is_some() {
                let id = IdText::new(part.id, self.base);
                let text = text::decode(part.data_coding, part.payload);
                self.write(&Line {
                    ts: &timestamp(),
                    system_id: part.system_id,
                    message_id: MessageIds::One(id.as_str()),
                    source_addr: part.source,
                    destination_addr: part.dest,
                    service_type: part.service_type,
                    esm_class: part.esm_class,
                    data_coding: part.data_coding,
                    ussd_service_op: part.ussd_op,
                    parts: 1,
                    text: &text,
                });
            }
            return true;
        };
        let key = PartialKey {
            system_id: part.system_id.to_owned(),
            source: part.source.to_owned(),
            dest: part.dest.to_owned(),
            reference: concat.reference,
            total: concat.total,
        };
        let complete = {
            let mut partials = self.partials.lock().unwrap_or_else(|e| e.into_inner());
            if !partials.contains_key(&key) && partials.len() >= MAX_PARTIALS / 2 {
                evict(&mut partials);
            }
            let mut entry = match partials.entry(key) {
                Entry::Occupied(o) => o,
                Entry::Vacant(v) => v.insert_entry(Partial {
                    first_seen: Instant::now(),
                    service_type: part.service_type.to_owned(),
                    esm_class: part.esm_class,
                    data_coding: part.data_coding,
                    parts: vec![None; usize::from(concat.total)],
                    received: 0,
                }),
            };
            let partial = entry.get_mut();
            let slot = &mut partial.parts[usize::from(concat.seq) - 1];
            if slot.is_none() {
                partial.received += 1;
            }
            *slot = Some((part.id, part.payload.to_vec()));
            if partial.received < partial.parts.len() {
                return false;
            }
            entry.remove()
        };
        if self.writer.is_some() {
            let done = complete;
            let mut ids = Vec::with_capacity(done.parts.len());
            let mut user_data = Vec::new();
            for (id, data) in done.parts.into_iter().flatten() {
                ids.push(IdText::new(id, self.base).as_str().to_owned());
                user_data.extend_from_slice(&data);
            }
            // Decoding the joined user data keeps characters split across parts whole.
            let text = text::decode(done.data_coding, &user_data);
            self.write(&Line {
                ts: &timestamp(),
                system_id: part.system_id,
                message_id: MessageIds::Many(ids),
                source_addr: part.source,
                destination_addr: part.dest,
                service_type: &done.service_type,
                esm_class: done.esm_class,
                data_coding: done.data_coding,
                ussd_service_op: None,
                parts: usize::from(concat.total),
                text: &text,
            });
        }
        true
    }

    fn write(&self, line: &Line<'_>) {
        let Some(writer) = &self.writer else { return };
        let mut bytes = match serde_json::to_vec(line) {
            Ok(b) => b,
            Err(_) => return,
        };
        bytes.push(b'\n');
        let tx = writer.lock().unwrap_or_else(|e| e.into_inner());
        // The writer thread only stops after `close`.
        let _ = tx.send(ToWriter::Line(bytes));
    }

    /// Flushes the record and stops its writer thread.
    pub(crate) async fn close(&self) -> io::Result<()> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        {
            let tx = writer.lock().unwrap_or_else(|e| e.into_inner());
            if tx.send(ToWriter::Close(done_tx)).is_err() {
                return Ok(());
            }
        }
        done_rx.await.unwrap_or(Ok(()))
    }
}

fn evict(partials: &mut HashMap<PartialKey, Partial>) {
    partials.retain(|_, p| p.first_seen.elapsed() < PARTIAL_TTL);
    while partials.len() >= MAX_PARTIALS {
        let oldest = partials
            .iter()
            .min_by_key(|(_, p)| p.first_seen)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                partials.remove(&k);
            }
            None => break,
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2025-03-01T12:00:00.123Z`.
fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

fn write_loop(file: File, rx: mpsc::Receiver<ToWriter>) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut dirty_since: Option<Instant> = None;
    let mut error: Option<io::Error> = None;
    let flush = |out: &mut BufWriter<File>, error: &mut Option<io::Error>| {
        if let Err(e) = out.flush() {
            if error.is_none() {
                tracing::warn!(error = %e, "smsc-sim: writing the message record failed");
            }
            *error = Some(e);
        }
    };
    loop {
        let msg = match dirty_since {
            Some(since) => {
                let wait = FLUSH_EVERY.saturating_sub(since.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        flush(&mut out, &mut error);
                        return;
                    }
                }
            }
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => {
                    flush(&mut out, &mut error);
                    return;
                }
            },
        };
        match msg {
            Some(ToWriter::Line(line)) => {
                if let Err(e) = out.write_all(&line) {
                    if error.is_none() {
                        tracing::warn!(error = %e, "smsc-sim: writing the message record failed");
                    }
                    error = Some(e);
                }
                dirty_since.get_or_insert_with(Instant::now);
            }
            Some(ToWriter::Close(done)) => {
                flush(&mut out, &mut error);
                let _ = done.send(match error.take() {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
                return;
            }
            None => {}
        }
        if dirty_since.is_some_and(|since| since.elapsed() >= FLUSH_EVERY) {
            flush(&mut out, &mut error);
            dirty_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part<'a>(id: u64, concat: Option<Concat>, payload: &'a [u8]) -> Part<'a> {
        Part {
            system_id: "esme",
            id,
            source: "PINPOST",
            dest: "819012345678",
            service_type: "",
            esm_class: 0x40,
            data_coding: 0x00,
            ussd_op: None,
            concat,
            payload,
        }
    }

    #[tokio::test]
    async fn reassembles_out_of_order_and_records_once() {
        let dir = std::env::temp_dir().join(format!(
            "pinpost-sim-record-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_file(&dir);
        let m = Messages::new(IdBase::Decimal, Some(&dir)).unwrap();
        let c = |seq| {
            Some(Concat {
                reference: 7,
                total: 3,
                seq,
            })
        };
        // The escape of '€' is split across parts 2 and 3.
        assert!(!m.accept(part(12, c(3), &[0x65, 0x21])));
        assert!(!m.accept(part(10, c(1), b"AB")));
        assert!(
            !m.accept(part(10, c(1), b"AB")),
            "a repeated part does not complete"
        );
        assert!(m.accept(part(11, c(2), &[0x43, 0x1b])));
        assert!(m.accept(part(13, None, b"x")));
        m.close().await.unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["text"], "ABC€!");
        assert_eq!(
            lines[0]["message_id"],
            serde_json::json!(["10", "11", "12"])
        );
        assert_eq!(lines[0]["parts"], 3);
        assert_eq!(lines[1]["message_id"], "13");
        assert!(lines[1]["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["ussd_service_op"], serde_json::Value::Null);
    }
}
