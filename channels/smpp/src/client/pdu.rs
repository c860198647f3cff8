//! Building submit_sm and bind_transceiver PDUs from pinpost's message and config.

use pinpost_channel_core::{ExposeSecret, SendError};
use rusmpp::pdus::{BindTransceiver, SubmitSm};
use rusmpp::tlvs::MessageSubmissionRequestTlvValue;
use rusmpp::types::{COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{
    DataCoding, EsmClass, InterfaceVersion as WireVersion, Npi, RegisteredDelivery, ServiceType,
    Ton, UssdServiceOp,
};
use time::{OffsetDateTime, UtcOffset};

use super::config::{InterfaceVersion, SmppConfig, SmppService};
use super::encoding::{Encoded, concat_udh};

/// esm_class for a plain message. Always set explicitly: rusmpp's default encodes as 0x08.
pub(crate) const ESM_PLAIN: u8 = 0x00;
/// esm_class with the UDH indicator, for concatenated parts.
pub(crate) const ESM_UDHI: u8 = 0x40;

/// `+819012345678` → `819012345678` (international, ISDN: TON 1 NPI 1). The address must be
/// E.164: a `+` and 1 to 15 digits.
pub(crate) fn destination(address: &str) -> Option<String> {
    let digits = address.strip_prefix('+')?;
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.to_owned())
}

/// SMPP absolute time in UTC: `YYMMDDhhmmss000+` (tenths 0, offset 00 quarter hours).
pub(crate) fn validity_period(expires_at: OffsetDateTime) -> String {
    let t = expires_at.to_offset(UtcOffset::UTC);
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}000+",
        t.year().rem_euclid(100),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn c_string<const MIN: usize, const MAX: usize>(
    value: &str,
    field: &str,
) -> Result<COctetString<MIN, MAX>, String> {
    COctetString::from_string(value.to_owned()).map_err(|e| format!("{field}: {e}"))
}

/// The bind_transceiver for `cfg`. Fails only on values `SmppConfig::validate` refuses.
pub(crate) fn bind_transceiver(cfg: &SmppConfig) -> Result<BindTransceiver, String> {
    let version = match cfg.interface_version {
        InterfaceVersion::V34 => WireVersion::Smpp3_4,
        InterfaceVersion::V50 => WireVersion::Smpp5_0,
    };
    Ok(BindTransceiver::builder()
        .system_id(c_string(&cfg.system_id, "system_id")?)
        // The error of a password conversion names the field only.
        .password(
            COctetString::from_string(cfg.password.expose_secret().to_owned())
                .map_err(|_| "password: not a valid SMPP password".to_owned())?,
        )
        .system_type(c_string(&cfg.system_type, "system_type")?)
        .interface_version(version)
        .addr_ton(Ton::Unknown)
        .addr_npi(Npi::Unknown)
        .address_range(COctetString::empty())
        .build())
}

/// One submit_sm per part of `encoded`, in order.
pub(crate) fn submit_sms(
    cfg: &SmppConfig,
    destination_addr: &str,
    validity: Option<&str>,
    encoded: &Encoded,
    concat_ref: u8,
) -> Result<Vec<SubmitSm>, SendError> {
    let local = |reason: String| SendError::Permanent {
        code: "invalid_pdu".to_owned(),
        reason,
    };
    let service_type = match cfg.service {
        SmppService::Sms => ServiceType::default(),
        SmppService::Ussd { .. } => {
            ServiceType::new(c_string("USSD", "service_type").map_err(local)?)
        }
    };
    let validity = match validity {
        None => EmptyOrFullCOctetString::empty(),
        Some(v) => EmptyOrFullCOctetString::from_string(v.to_owned())
            .map_err(|e| local(format!("validity_period: {e}")))?,
    };
    let source = c_string(&cfg.source_addr, "source_addr").map_err(local)?;
    let destination = c_string(destination_addr, "destination_addr").map_err(local)?;
    let registered_delivery = RegisteredDelivery::from(u8::from(cfg.request_receipts));

    let total = encoded.parts.len();
    let total_u8 = u8::try_from(total).map_err(|_| local("too many parts".into()))?;
    let mut pdus = Vec::with_capacity(total);
    for (i, part) in encoded.parts.iter().enumerate() {
        let (esm_class, short_message) = if total == 1 {
            (ESM_PLAIN, part.clone())
        } else {
            let mut payload = Vec::with_capacity(6 + part.len());
            payload.extend_from_slice(&concat_udh(concat_ref, total_u8, i as u8 + 1));
            payload.extend_from_slice(part);
            (ESM_UDHI, payload)
        };
        let short_message = OctetString::from_vec(short_message)
            .map_err(|_| local("short_message longer than 255 octets".into()))?;
        let mut builder = SubmitSm::builder()
            .service_type(service_type.clone())
            .source_addr_ton(Ton::from(cfg.source_ton))
            .source_addr_npi(Npi::from(cfg.source_npi))
            .source_addr(source.clone())
            .dest_addr_ton(Ton::from(1))
            .dest_addr_npi(Npi::from(1))
            .destination_addr(destination.clone())
            .esm_class(EsmClass::from(esm_class))
            .protocol_id(0)
            .schedule_delivery_time(EmptyOrFullCOctetString::empty())
            .validity_period(validity.clone())
            .registered_delivery(registered_delivery)
            .data_coding(DataCoding::from(encoded.coding.data_coding()))
            .sm_default_msg_id(0)
            .short_message(short_message);
        if let SmppService::Ussd { op } = cfg.service {
            builder = builder.push_tlv(MessageSubmissionRequestTlvValue::UssdServiceOp(
                UssdServiceOp::from(op),
            ));
        }
        pdus.push(builder.build());
    }
    Ok(pdus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::encoding::{self, SMS};
    use pinpost_channel_core::{ChannelId, SecretString};
    use rusmpp::encode::{Encode, Length};

    fn cfg() -> SmppConfig {
        SmppConfig::new(
            ChannelId::new("sms-1"),
            "smpp://127.0.0.1:2775",
            "pinpost",
            SecretString::from("pw".to_owned()),
            "PINPOST",
        )
    }

    fn wire(sm: &SubmitSm) -> Vec<u8> {
        let mut buf = vec![0u8; sm.length()];
        let n = sm.encode(&mut buf);
        buf.truncate(n);
        buf
    }

    #[test]
    fn destinations_are_e164() {
        assert_eq!(
            destination("+819012345678").as_deref(),
            Some("819012345678")
        );
        assert_eq!(destination("+1").as_deref(), Some("1"));
        assert_eq!(destination("819012345678"), None);
        assert_eq!(destination("+81 90 1234"), None);
        assert_eq!(destination("+"), None);
        assert_eq!(destination("+1234567890123456"), None);
        assert_eq!(destination("+81abc"), None);
    }

    #[test]
    fn validity_period_is_utc_absolute_time() {
        let t = time::macros::datetime!(2031-02-03 04:05:06.7 +09:00);
        assert_eq!(validity_period(t), "310202190506000+");
        let t = time::macros::datetime!(2000-12-31 23:59:59 UTC);
        assert_eq!(validity_period(t), "001231235959000+");
        assert_eq!(validity_period(t).len(), 16);
    }

    #[test]
    fn single_part_submit_has_esm_class_zero_and_the_right_fields() {
        let c = cfg();
        let e = encoding::encode("PIN 1234", &SMS).unwrap();
        let pdus = submit_sms(&c, "819012345678", Some("310202190506000+"), &e, 7).unwrap();
        assert_eq!(pdus.len(), 1);
        let sm = &pdus[0];
        assert_eq!(u8::from(sm.esm_class), 0x00);
        assert_eq!(u8::from(sm.dest_addr_ton), 1);
        assert_eq!(u8::from(sm.dest_addr_npi), 1);
        assert_eq!(u8::from(sm.source_addr_ton), 5);
        assert_eq!(u8::from(sm.source_addr_npi), 0);
        assert_eq!(u8::from(sm.registered_delivery), 1);
        assert_eq!(u8::from(sm.data_coding), 0x00);
        assert_eq!(sm.short_message().as_ref(), b"PIN 1234");
        assert!(sm.tlvs().is_empty());

        // The encoded body: service_type "", then TON/NPI/source, TON/NPI/destination, and
        // esm_class right after the destination's NUL.
        let bytes = wire(sm);
        let mut expect = vec![0u8]; // service_type
        expect.extend_from_slice(&[5, 0]);
        expect.extend_from_slice(b"PINPOST\0");
        expect.extend_from_slice(&[1, 1]);
        expect.extend_from_slice(b"819012345678\0");
        expect.push(0x00); // esm_class
        assert_eq!(&bytes[..expect.len()], &expect[..]);
        assert!(
            bytes.windows(17).any(|w| w == b"310202190506000+\0"),
            "validity period on the wire"
        );
    }

    #[test]
    fn concatenated_parts_carry_udh_and_esm_class_0x40() {
        let c = cfg();
        let e = encoding::encode(&"あ".repeat(100), &SMS).unwrap();
        let pdus = submit_sms(&c, "819012345678", None, &e, 0x2A).unwrap();
        assert_eq!(pdus.len(), 2);
        for (i, sm) in pdus.iter().enumerate() {
            assert_eq!(u8::from(sm.esm_class), 0x40);
            assert_eq!(u8::from(sm.data_coding), 0x08);
            let m = sm.short_message().as_ref();
            assert_eq!(&m[..6], &[0x05, 0x00, 0x03, 0x2A, 2, i as u8 + 1]);
            assert!(m.len() <= 140);
        }
    }

    #[test]
    fn ussd_sets_service_type_and_the_op_tlv() {
        let mut c = cfg();
        c.service = SmppService::Ussd { op: 3 };
        c.request_receipts = false;
        let e = encoding::encode("PIN 1234", &encoding::USSD).unwrap();
        let pdus = submit_sms(&c, "819012345678", None, &e, 0).unwrap();
        let sm = &pdus[0];
        assert_eq!(sm.service_type.value().as_str(), "USSD");
        assert_eq!(u8::from(sm.registered_delivery), 0);
        let bytes = wire(sm);
        assert!(
            bytes.ends_with(&[0x05, 0x01, 0x00, 0x01, 0x03]),
            "{bytes:02x?}"
        );
    }

    #[test]
    fn bind_uses_the_configured_version() {
        let mut c = cfg();
        c.interface_version = InterfaceVersion::V34;
        let b = bind_transceiver(&c).unwrap();
        assert_eq!(u8::from(b.interface_version), 0x34);
        assert_eq!(b.system_id.as_str(), "pinpost");
        c.interface_version = InterfaceVersion::V50;
        assert_eq!(
            u8::from(bind_transceiver(&c).unwrap().interface_version),
            0x50
        );
    }
}
