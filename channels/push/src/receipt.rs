//! Head-unit acknowledgements: a message on the response topic whose Correlation Data is the
//! correlation id of a PIN becomes a [`Receipt`] for that provider reference.

use pinpost_channel_core::{ChannelId, Receipt, ReceiptStatus};
use rumqttc::v5::mqttbytes::v5::Publish;
use time::OffsetDateTime;

use crate::message::sanitize;

/// The part of an acknowledgement payload the channel reads; anything else is ignored.
#[derive(serde::Deserialize)]
struct Ack {
    status: Option<String>,
    #[serde(default, deserialize_with = "code_as_string")]
    code: Option<String>,
}

fn code_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<serde_json::Value> = serde::Deserialize::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::String(s)) => Some(sanitize(&s)),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// The status word of a head-unit acknowledgement.
///
/// `displayed`, `delivered`, `read` → Delivered; `rejected`, `undeliverable`, `failed` →
/// Undeliverable; `expired` → Expired; `received`, `queued`, `pending` → Pending; anything
/// else (or no status) → Unknown. Case is ignored.
pub fn ack_status(status: &str) -> ReceiptStatus {
    match status.to_ascii_lowercase().as_str() {
        "displayed" | "delivered" | "read" => ReceiptStatus::Delivered,
        "rejected" | "undeliverable" | "failed" => ReceiptStatus::Undeliverable,
        "expired" => ReceiptStatus::Expired,
        "received" | "queued" | "pending" => ReceiptStatus::Pending,
        _ => ReceiptStatus::Unknown,
    }
}

/// The receipt carried by a message on the response topic, or `None` when it has no usable
/// Correlation Data (then it is not an answer to a PIN). The payload is JSON
/// `{"status": "...", "code": ...}`; a payload that is not such JSON gives `Unknown`.
pub(crate) fn parse_ack(channel: &ChannelId, publish: &Publish) -> Option<Receipt> {
    let correlation = publish.properties.as_ref()?.correlation_data.as_ref()?;
    let provider_ref = std::str::from_utf8(correlation).ok()?;
    if provider_ref.is_empty() || provider_ref.chars().any(char::is_control) {
        return None;
    }
    let (status, error_code) = match serde_json::from_slice::<Ack>(&publish.payload) {
        Ok(ack) => (
            ack.status
                .as_deref()
                .map_or(ReceiptStatus::Unknown, ack_status),
            ack.code,
        ),
        Err(_) => (ReceiptStatus::Unknown, None),
    };
    Some(Receipt {
        channel: channel.clone(),
        provider_ref: provider_ref.to_owned(),
        status,
        error_code,
        received_at: OffsetDateTime::now_utc(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;

    fn ack(correlation: Option<&[u8]>, payload: &str) -> Publish {
        let props = PublishProperties {
            correlation_data: correlation.map(Bytes::copy_from_slice),
            ..Default::default()
        };
        Publish::new(
            "pinpost/gw/acks",
            QoS::AtLeastOnce,
            payload.to_owned(),
            Some(props),
        )
    }

    #[test]
    fn statuses() {
        let id = ChannelId::new("carnav");
        let cases = [
            (r#"{"status":"displayed"}"#, ReceiptStatus::Delivered),
            (
                r#"{"status":"Delivered","extra":1}"#,
                ReceiptStatus::Delivered,
            ),
            (r#"{"status":"rejected"}"#, ReceiptStatus::Undeliverable),
            (r#"{"status":"expired"}"#, ReceiptStatus::Expired),
            (r#"{"status":"received"}"#, ReceiptStatus::Pending),
            (r#"{"status":"on fire"}"#, ReceiptStatus::Unknown),
            (r#"{}"#, ReceiptStatus::Unknown),
            ("not json", ReceiptStatus::Unknown),
        ];
        for (payload, status) in cases {
            let r = parse_ack(&id, &ack(Some(b"d-1.ab"), payload)).expect(payload);
            assert_eq!(r.status, status, "{payload}");
            assert_eq!(r.provider_ref, "d-1.ab");
            assert_eq!(r.channel, id);
        }
    }

    #[test]
    fn error_codes() {
        let id = ChannelId::new("carnav");
        let r = parse_ack(&id, &ack(Some(b"x"), r#"{"status":"rejected","code":42}"#)).unwrap();
        assert_eq!(r.error_code.as_deref(), Some("42"));
        let r = parse_ack(
            &id,
            &ack(Some(b"x"), r#"{"status":"rejected","code":"busy"}"#),
        )
        .unwrap();
        assert_eq!(r.error_code.as_deref(), Some("busy"));
        let r = parse_ack(&id, &ack(Some(b"x"), r#"{"status":"rejected"}"#)).unwrap();
        assert_eq!(r.error_code, None);
    }

    #[test]
    fn no_usable_correlation_data_is_not_a_receipt() {
        let id = ChannelId::new("carnav");
        assert!(parse_ack(&id, &ack(None, r#"{"status":"displayed"}"#)).is_none());
        assert!(parse_ack(&id, &ack(Some(b""), r#"{"status":"displayed"}"#)).is_none());
        assert!(parse_ack(&id, &ack(Some(&[0xff, 0xfe]), r#"{"status":"displayed"}"#)).is_none());
        let no_props = Publish::new("t", QoS::AtLeastOnce, "{}", None);
        assert!(parse_ack(&id, &no_props).is_none());
    }
}
