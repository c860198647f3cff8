//! Message ids, delivery receipts and USSD confirmations as deliver_sm PDUs.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use rusmpp::{
    Command, CommandStatus,
    pdus::DeliverSm,
    tlvs::MessageDeliveryRequestTlvValue,
    types::{COctetString, OctetString},
    values::{DataCoding, EsmClass, MessageState, Npi, ServiceType, Ton, UssdServiceOp},
};
use time::OffsetDateTime;

/// How a numeric message id is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdBase {
    /// Lowercase hexadecimal without leading zeros, e.g. `a001f`.
    #[default]
    Hex,
    /// Decimal, e.g. `655391`.
    Decimal,
}

impl fmt::Display for IdBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdBase::Hex => "hex",
            IdBase::Decimal => "decimal",
        })
    }
}

impl FromStr for IdBase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "hex" | "hexadecimal" | "16" => Ok(IdBase::Hex),
            "dec" | "decimal" | "10" => Ok(IdBase::Decimal),
            other => Err(format!(
                "unknown id base {other:?} (expected hex or decimal)"
            )),
        }
    }
}

/// A message id formatted without allocating.
#[derive(Clone, Copy)]
pub(crate) struct IdText {
    buf: [u8; 20],
    start: u8,
}

impl IdText {
    pub(crate) fn new(id: u64, base: IdBase) -> Self {
        let radix = match base {
            IdBase::Hex => 16,
            IdBase::Decimal => 10,
        };
        let mut buf = [0u8; 20];
        let mut at = buf.len();
        let mut n = id;
        loop {
            at -= 1;
            buf[at] = b"0123456789abcdef"[(n % radix) as usize];
            n /= radix;
            if n == 0 {
                break;
            }
        }
        IdText {
            buf,
            start: at as u8,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..]
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }

    /// The id as a C-octet string (NUL-terminated) for a PDU field or TLV.
    pub(crate) fn to_c_octet<const MAX: usize>(self) -> COctetString<1, MAX> {
        let mut v = Vec::with_capacity(self.as_bytes().len() + 1);
        v.extend_from_slice(self.as_bytes());
        v.push(0);
        COctetString::from_vec(v).unwrap_or_else(|_| COctetString::empty())
    }
}

/// An SMPP address (TON, NPI, up to 20 characters) stored inline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Addr {
    ton: u8,
    npi: u8,
    len: u8,
    buf: [u8; 20],
}

impl Addr {
    pub(crate) fn new(ton: u8, npi: u8, digits: &str) -> Self {
        let bytes = digits.as_bytes();
        let len = bytes.len().min(20);
        let mut buf = [0u8; 20];
        buf[..len].copy_from_slice(&bytes[..len]);
        Addr {
            ton,
            npi,
            len: len as u8,
            buf,
        }
    }

    fn c_octet(&self) -> COctetString<1, 21> {
        let mut v = Vec::with_capacity(usize::from(self.len) + 1);
        v.extend_from_slice(&self.buf[..usize::from(self.len)]);
        v.push(0);
        COctetString::from_vec(v).unwrap_or_else(|_| COctetString::empty())
    }
}

/// The first characters of a message as they appear after `text:` in a receipt (printable
/// ASCII; anything else becomes `?`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Snippet {
    len: u8,
    buf: [u8; 20],
}

impl Snippet {
    pub(crate) fn from_text(text: &str) -> Self {
        let mut s = Snippet::default();
        for c in text.chars().take(20) {
            s.buf[usize::from(s.len)] = if c == ' ' || c.is_ascii_graphic() {
                c as u8
            } else {
                b'?'
            };
            s.len += 1;
        }
        s
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// What the handset side reports back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReceiptKind {
    /// Delivery receipt `stat:DELIVRD`.
    Delivered,
    /// Delivery receipt `stat:UNDELIV err:001`.
    Undeliverable,
    /// USSD: USSN confirm (ussd_service_op 19) for a USSN request.
    UssnConfirm,
    /// USSD: USSR confirm (ussd_service_op 18) carrying the user's answer `1`.
    UssrConfirm,
}

/// A receipt waiting to be delivered, with everything needed to build its deliver_sm.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Receipt {
    pub id: u64,
    pub kind: ReceiptKind,
    /// The submit_sm's source_addr (the receipt's destination).
    pub source: Addr,
    /// The submit_sm's destination_addr (the receipt's source).
    pub dest: Addr,
    pub submit_secs: i64,
    pub snippet: Snippet,
    /// Deliveries that were answered with an error status so far.
    pub attempts: u8,
}

/// `YYMMDDhhmm` of the current minute, recomputed only when the minute changes.
#[derive(Debug, Default)]
pub(crate) struct DateCache {
    minute: i64,
    text: [u8; 10],
}

impl DateCache {
    pub(crate) fn get(&mut self, secs: i64) -> [u8; 10] {
        let minute = secs.div_euclid(60);
        if minute != self.minute || self.text[0] == 0 {
            self.minute = minute;
            self.text = yymmddhhmm(secs);
        }
        self.text
    }
}

fn yymmddhhmm(secs: i64) -> [u8; 10] {
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fields = [
        t.year().rem_euclid(100) as u8,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
    ];
    let mut out = [0u8; 10];
    for (i, v) in fields.into_iter().enumerate() {
        out[2 * i] = b'0' + v / 10;
        out[2 * i + 1] = b'0' + v % 10;
    }
    out
}

/// Current Unix time in seconds.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Builds the deliver_sm for `receipt` with sequence number `seq`.
pub(crate) fn deliver_sm(
    receipt: &Receipt,
    seq: u32,
    base: IdBase,
    submit_date: [u8; 10],
    done_date: [u8; 10],
) -> Command {
    let id = IdText::new(receipt.id, base);
    let mut tlvs = Vec::with_capacity(2);
    let (service_type, esm_class, short_message) = match receipt.kind {
        ReceiptKind::Delivered | ReceiptKind::Undeliverable => {
            let delivered = receipt.kind == ReceiptKind::Delivered;
            let mut text = Vec::with_capacity(112 + 20);
            text.extend_from_slice(b"id:");
            text.extend_from_slice(id.as_bytes());
            text.extend_from_slice(if delivered {
                b" sub:001 dlvrd:001 submit date:"
            } else {
                b" sub:001 dlvrd:000 submit date:"
            });
            text.extend_from_slice(&submit_date);
            text.extend_from_slice(b" done date:");
            text.extend_from_slice(&done_date);
            text.extend_from_slice(if delivered {
                b" stat:DELIVRD err:000 text:"
            } else {
                b" stat:UNDELIV err:001 text:"
            });
            text.extend_from_slice(receipt.snippet.as_bytes());
            tlvs.push(MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                id.to_c_octet(),
            ));
            tlvs.push(MessageDeliveryRequestTlvValue::MessageState(if delivered {
                MessageState::Delivered
            } else {
                MessageState::Undeliverable
            }));
            (ServiceType::null(), EsmClass::from(0x04), text)
        }
        ReceiptKind::UssnConfirm | ReceiptKind::UssrConfirm => {
            let (op, text) = if receipt.kind == ReceiptKind::UssnConfirm {
                (UssdServiceOp::UssnConfirm, Vec::new())
            } else {
                (UssdServiceOp::UssrConfirm, b"1".to_vec())
            };
            tlvs.push(MessageDeliveryRequestTlvValue::UssdServiceOp(op));
            tlvs.push(MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                id.to_c_octet(),
            ));
            let ussd = COctetString::from_static_slice(b"USSD\0").unwrap_or_default();
            (ServiceType::new(ussd), EsmClass::from(0x00), text)
        }
    };
    let short_message = OctetString::from_bytes(Bytes::from(short_message))
        .unwrap_or_else(|_| OctetString::empty());
    let pdu = DeliverSm::builder()
        .service_type(service_type)
        .source_addr_ton(Ton::from(receipt.dest.ton))
        .source_addr_npi(Npi::from(receipt.dest.npi))
        .source_addr(receipt.dest.c_octet())
        .dest_addr_ton(Ton::from(receipt.source.ton))
        .dest_addr_npi(Npi::from(receipt.source.npi))
        .destination_addr(receipt.source.c_octet())
        .esm_class(esm_class)
        .data_coding(DataCoding::McSpecific)
        .short_message(short_message)
        .tlvs(tlvs)
        .build();
    Command::new(CommandStatus::EsmeRok, seq, pdu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_both_bases() {
        assert_eq!(IdText::new(0x1a2b, IdBase::Hex).as_str(), "1a2b");
        assert_eq!(IdText::new(0x1a2b, IdBase::Decimal).as_str(), "6699");
        assert_eq!(IdText::new(0, IdBase::Hex).as_str(), "0");
        assert_eq!(
            IdText::new(u64::MAX, IdBase::Decimal).as_str(),
            "18446744073709551615"
        );
        assert_eq!(
            IdText::new(u64::MAX, IdBase::Hex).as_str(),
            "ffffffffffffffff"
        );
        assert_eq!("DEC".parse::<IdBase>(), Ok(IdBase::Decimal));
        assert!("octal".parse::<IdBase>().is_err());
    }

    #[test]
    fn dates_and_snippets() {
        // 2024-02-29 13:07:59 UTC
        assert_eq!(&yymmddhhmm(1_709_212_079), b"2402291307");
        let mut cache = DateCache::default();
        assert_eq!(&cache.get(1_709_212_079), b"2402291307");
        assert_eq!(&cache.get(1_709_212_081), b"2402291308");
        assert_eq!(
            Snippet::from_text("Your PIN: 1234 € valid until tomorrow").as_bytes(),
            b"Your PIN: 1234 ? val"
        );
    }
}
