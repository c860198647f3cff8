//! What goes on the wire for one PIN: the per-vehicle topic, the JSON payload, the MQTT 5
//! properties (message expiry, correlation data, response topic, content type), and the
//! classification of the PUBACK that answers it.

use bytes::Bytes;
use pinpost_channel_core::{ExposeSecret, OutboundMessage, SendError};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{PubAck, PubAckReason, Publish, PublishProperties};
use time::OffsetDateTime;

/// The content type of every PIN payload.
pub const CONTENT_TYPE: &str = "application/json";

/// How long the queue is asked to wait after a PUBACK with Quota Exceeded (0x97).
pub const QUOTA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The JSON a head unit receives.
#[derive(serde::Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    delivery_id: &'a str,
}

/// A correlation id unique per send: the delivery id, a dot and 16 random hex digits.
pub(crate) fn correlation_id(delivery_id: &str) -> String {
    format!("{delivery_id}.{:016x}", rand::random::<u64>())
}

/// The Message Expiry Interval for a PIN expiring at `expires_at`: its remaining lifetime in
/// whole seconds (rounded down, so the broker never holds it past its expiry). `None` when the
/// PIN has no expiry. A PIN already expired, or with less than a second left, is refused.
pub(crate) fn expiry_interval(
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Option<u32>, SendError> {
    let Some(at) = expires_at else {
        return Ok(None);
    };
    let secs = (at - now).whole_seconds();
    if secs < 1 {
        return Err(SendError::Permanent {
            code: "expired".into(),
            reason: "the PIN expired before it could be published".into(),
        });
    }
    Ok(Some(u32::try_from(secs).unwrap_or(u32::MAX)))
}

/// The JSON payload `{"type":"pin","text":…,"delivery_id":…}`. It holds the PIN: it goes to
/// the broker and nowhere else.
pub(crate) fn payload(msg: &OutboundMessage) -> Bytes {
    let body = Payload {
        kind: "pin",
        text: msg.body.expose_secret(),
        delivery_id: &msg.delivery_id,
    };
    // Serialising a struct of strings cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A QoS 1 PUBLISH for `topic` with everything but the packet id and the expiry interval,
/// which are set when the packet is handed to the connection.
pub(crate) fn publish(
    topic: String,
    payload: Bytes,
    correlation: &str,
    response_topic: &str,
) -> Publish {
    let properties = PublishProperties {
        // 1: the payload is UTF-8 (JSON).
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        topic_alias: None,
        response_topic: Some(response_topic.to_owned()),
        correlation_data: Some(Bytes::copy_from_slice(correlation.as_bytes())),
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: Some(CONTENT_TYPE.to_owned()),
    };
    Publish::new(topic, QoS::AtLeastOnce, payload, Some(properties))
}

/// The MQTT 5 reason code of a PUBACK.
pub(crate) fn puback_reason_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

/// What a PUBACK means for the send. `Ok(())`: the broker took the message (Success, or No
/// Matching Subscribers: a head unit whose persistent session lapsed, or one not yet
/// registered, may still subscribe; the head-unit acknowledgement decides delivery).
pub(crate) fn classify_puback(puback: &PubAck) -> Result<(), SendError> {
    let code = puback_reason_code(puback.reason);
    let broker_says = puback
        .properties
        .as_ref()
        .and_then(|p| p.reason_string.as_deref())
        .map(|s| format!(" ({})", sanitize(s)))
        .unwrap_or_default();
    let code_str = format!("0x{code:02x}");
    match puback.reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        PubAckReason::NotAuthorized => Err(SendError::Permanent {
            code: code_str,
            reason: format!("broker refused the PIN topic: not authorized{broker_says}"),
        }),
        PubAckReason::TopicNameInvalid => Err(SendError::Permanent {
            code: code_str,
            reason: format!("broker refused the PIN topic: topic name invalid{broker_says}"),
        }),
        PubAckReason::PayloadFormatInvalid => Err(SendError::Permanent {
            code: code_str,
            reason: format!("broker refused the payload format{broker_says}"),
        }),
        PubAckReason::QuotaExceeded => Err(SendError::Throttled {
            retry_after: QUOTA_RETRY_AFTER,
        }),
        PubAckReason::PacketIdentifierInUse
        | PubAckReason::UnspecifiedError
        | PubAckReason::ImplementationSpecificError => Err(SendError::Transient {
            reason: format!("broker did not take the PIN: PUBACK {code_str}{broker_says}"),
        }),
    }
}

/// A peer-supplied string fit for an error message: printable, at most 120 characters.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpost_channel_core::testkit;
    use rumqttc::v5::mqttbytes::v5::PubAckProperties;
    use time::Duration;

    #[test]
    fn expiry_is_the_remaining_lifetime_rounded_down() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(expiry_interval(None, now).unwrap(), None);
        assert_eq!(
            expiry_interval(Some(now + Duration::seconds(300)), now).unwrap(),
            Some(300)
        );
        assert_eq!(
            expiry_interval(Some(now + Duration::milliseconds(2_900)), now).unwrap(),
            Some(2)
        );
        for gone in [
            now - Duration::seconds(1),
            now,
            now + Duration::milliseconds(999),
        ] {
            match expiry_interval(Some(gone), now) {
                Err(SendError::Permanent { code, .. }) => assert_eq!(code, "expired"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            expiry_interval(Some(now + Duration::days(365 * 200)), now).unwrap(),
            Some(u32::MAX)
        );
    }

    #[test]
    fn payload_is_the_documented_json() {
        let msg = testkit::message("d-1", "VIN1", "PIN \"1234\"");
        let v: serde_json::Value = serde_json::from_slice(&payload(&msg)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "pin", "text": "PIN \"1234\"", "delivery_id": "d-1"})
        );
    }

    #[test]
    fn publish_carries_the_properties() {
        let p = publish(
            "vehicles/VIN1/pin".into(),
            Bytes::from_static(b"{}"),
            "d-1.00ff",
            "pinpost/gw/acks",
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(!p.retain);
        let props = p.properties.unwrap();
        assert_eq!(props.correlation_data.as_deref(), Some(&b"d-1.00ff"[..]));
        assert_eq!(props.response_topic.as_deref(), Some("pinpost/gw/acks"));
        assert_eq!(props.content_type.as_deref(), Some(CONTENT_TYPE));
        assert_eq!(props.payload_format_indicator, Some(1));
    }

    #[test]
    fn correlation_ids_are_unique_and_start_with_the_delivery() {
        let a = correlation_id("d-9");
        let b = correlation_id("d-9");
        assert_ne!(a, b);
        assert!(a.starts_with("d-9.") && a.len() == "d-9.".len() + 16, "{a}");
    }

    fn puback(reason: PubAckReason) -> PubAck {
        PubAck {
            pkid: 1,
            reason,
            properties: Some(PubAckProperties {
                reason_string: Some("denied\nby acl".into()),
                user_properties: Vec::new(),
            }),
        }
    }

    #[test]
    fn puback_reasons_are_classified() {
        assert!(classify_puback(&puback(PubAckReason::Success)).is_ok());
        assert!(classify_puback(&puback(PubAckReason::NoMatchingSubscribers)).is_ok());
        for (reason, code) in [
            (PubAckReason::NotAuthorized, "0x87"),
            (PubAckReason::TopicNameInvalid, "0x90"),
            (PubAckReason::PayloadFormatInvalid, "0x99"),
        ] {
            match classify_puback(&puback(reason)) {
                Err(SendError::Permanent { code: c, reason }) => {
                    assert_eq!(c, code);
                    assert!(reason.contains("(deniedby acl)"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        for reason in [
            PubAckReason::UnspecifiedError,
            PubAckReason::ImplementationSpecificError,
            PubAckReason::PacketIdentifierInUse,
        ] {
            assert!(matches!(
                classify_puback(&puback(reason)),
                Err(SendError::Transient { .. })
            ));
        }
        assert_eq!(
            classify_puback(&puback(PubAckReason::QuotaExceeded)),
            Err(SendError::Throttled {
                retry_after: QUOTA_RETRY_AFTER
            })
        );
    }
}
