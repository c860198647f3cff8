//! Text to `short_message` octets.
//!
//! GSM 03.38 default alphabet as unpacked septets (data_coding 0x00) when every character
//! has a GSM code (extension-table characters take two septets: ESC + code); UCS-2 as
//! UTF-16BE (data_coding 0x08) otherwise. Too long for one message: split into parts of at
//! most 153 septets / 67 UTF-16 units, each behind a 6-octet concatenation UDH; an escape
//! sequence or a surrogate pair is never cut in two.

pub(crate) use crate::gsm::ESC;
use crate::gsm::{BASIC, EXTENSION};

/// The data coding chosen for a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// GSM 03.38 default alphabet, unpacked septets: data_coding 0x00.
    Gsm7,
    /// UCS-2 / UTF-16BE: data_coding 0x08.
    Ucs2,
}

impl Coding {
    pub(crate) fn data_coding(self) -> u8 {
        match self {
            Coding::Gsm7 => 0x00,
            Coding::Ucs2 => 0x08,
        }
    }
}

/// How much one message and one concatenated part hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Septets in a single GSM message.
    pub single_gsm: usize,
    /// Septets in one part of a concatenated GSM message.
    pub part_gsm: usize,
    /// UTF-16 units in a single UCS-2 message.
    pub single_ucs2: usize,
    /// UTF-16 units in one part of a concatenated UCS-2 message.
    pub part_ucs2: usize,
    /// Whether a text may be split at all.
    pub concatenate: bool,
}

/// SMS: 160/153 septets, 70/67 UTF-16 units.
pub(crate) const SMS: Limits = Limits {
    single_gsm: 160,
    part_gsm: 153,
    single_ucs2: 70,
    part_ucs2: 67,
    concatenate: true,
};

/// USSD: one message of at most 182 septets or 80 UTF-16 units (160 octets).
pub(crate) const USSD: Limits = Limits {
    single_gsm: 182,
    part_gsm: 182,
    single_ucs2: 80,
    part_ucs2: 80,
    concatenate: false,
};

/// The most parts an 8-bit concatenation UDH can number.
pub(crate) const MAX_PARTS: usize = 255;

/// A text ready for submit_sm: one payload per part (without UDH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub coding: Coding,
    pub parts: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EncodeError {
    /// The text needs more parts than allowed (1 when concatenation is off).
    TooLong { parts: usize },
}

/// The septets of one character: one, or ESC plus one.
fn gsm_septets(c: char) -> Option<([u8; 2], usize)> {
    if c != '\u{1B}'
        && let Some(i) = BASIC.iter().position(|&b| b == c)
    {
        return Some(([i as u8, 0], 1));
    }
    EXTENSION
        .iter()
        .find(|(e, _)| *e == c)
        .map(|&(_, code)| ([ESC, code], 2))
}

/// Whether every character of `text` has a GSM 03.38 code.
#[cfg(test)]
pub(crate) fn fits_gsm(text: &str) -> bool {
    text.chars().all(|c| gsm_septets(c).is_some())
}

/// Encode `text`, choosing the coding and splitting it as `limits` require.
pub(crate) fn encode(text: &str, limits: &Limits) -> Result<Encoded, EncodeError> {
    // Each unit is the encoding of one character; a unit is never split across parts.
    let gsm: Option<Vec<([u8; 4], usize)>> = text
        .chars()
        .map(|c| {
            gsm_septets(c).map(|(s, n)| {
                let mut u = [0u8; 4];
                u[..n].copy_from_slice(&s[..n]);
                (u, n)
            })
        })
        .collect();
    let (coding, units, single, part, unit_weight) = match gsm {
        // A septet is one octet unpacked, so weight 1 per octet.
        Some(units) => (Coding::Gsm7, units, limits.single_gsm, limits.part_gsm, 1),
        None => {
            let units = text
                .chars()
                .map(|c| {
                    let mut buf = [0u16; 2];
                    let utf16 = c.encode_utf16(&mut buf);
                    let mut u = [0u8; 4];
                    for (i, w) in utf16.iter().enumerate() {
                        u[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
                    }
                    (u, utf16.len() * 2)
                })
                .collect();
            // Limits count UTF-16 units: two octets each.
            (Coding::Ucs2, units, limits.single_ucs2, limits.part_ucs2, 2)
        }
    };

    let total_octets: usize = units.iter().map(|(_, n)| n).sum();
    if total_octets <= single * unit_weight {
        let mut payload = Vec::with_capacity(total_octets);
        for (u, n) in &units {
            payload.extend_from_slice(&u[..*n]);
        }
        return Ok(Encoded {
            coding,
            parts: vec![payload],
        });
    }
    if !limits.concatenate {
        return Err(EncodeError::TooLong { parts: 2 });
    }

    let cap = part * unit_weight;
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut current: Vec<u8> = Vec::with_capacity(cap);
    for (u, n) in &units {
        if current.len() + n > cap {
            parts.push(std::mem::replace(&mut current, Vec::with_capacity(cap)));
        }
        current.extend_from_slice(&u[..*n]);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    if parts.len() > MAX_PARTS {
        return Err(EncodeError::TooLong { parts: parts.len() });
    }
    Ok(Encoded { coding, parts })
}

/// The concatenation UDH (IEI 0x00, 8-bit reference) for part `seq` (1-based) of `total`.
pub(crate) fn concat_udh(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, seq]
}

/// Decode unpacked GSM septets (for tests and diagnostics of our own output).
#[cfg(test)]
pub(crate) fn decode_gsm(septets: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut it = septets.iter();
    while let Some(&s) = it.next() {
        if s == ESC {
            let &code = it.next()?;
            let (c, _) = EXTENSION.iter().find(|(_, e)| *e == code)?;
            out.push(*c);
        } else {
            out.push(*BASIC.get(usize::from(s))?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16be(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
    }

    fn decode_ucs2(bytes: &[u8]) -> String {
        assert_eq!(bytes.len() % 2, 0, "odd UCS-2 length");
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).expect("a part splits a surrogate pair")
    }

    #[test]
    fn plain_text_is_gsm_single_part() {
        let e = encode("Your PIN 7305 9177 @ $5", &SMS).unwrap();
        assert_eq!(e.coding, Coding::Gsm7);
        assert_eq!(e.coding.data_coding(), 0x00);
        assert_eq!(e.parts.len(), 1);
        // '@' is septet 0x00 and '$' is 0x02; the rest of ASCII letters/digits are identity.
        let p = &e.parts[0];
        assert_eq!(&p[..9], b"Your PIN ");
        assert_eq!(p[p.len() - 4], 0x00);
        assert_eq!(p[p.len() - 2], 0x02);
        assert_eq!(decode_gsm(p).unwrap(), "Your PIN 7305 9177 @ $5");
    }

    #[test]
    fn gsm_specials_and_escapes_map_to_their_septets() {
        let e = encode("€[]{}~^|\\ ÄÖÑÜäöñüà§¿¡ΔΦΓΛΩΠΨΣΘΞ_", &SMS).unwrap();
        assert_eq!(e.coding, Coding::Gsm7);
        let p = &e.parts[0];
        assert_eq!(&p[..2], &[ESC, 0x65]);
        assert_eq!(&p[2..4], &[ESC, 0x3C]);
        assert_eq!(decode_gsm(p).unwrap(), "€[]{}~^|\\ ÄÖÑÜäöñüà§¿¡ΔΦΓΛΩΠΨΣΘΞ_");
        assert!(fits_gsm("Ç\n\r"));
        assert!(
            !fits_gsm("ç"),
            "lower-case c cedilla is not in the default alphabet"
        );
        assert!(!fits_gsm("\u{1B}"), "a raw ESC character is not text");
    }

    #[test]
    fn one_hundred_sixty_septets_fit_one_message_and_161_need_two() {
        let e = encode(&"a".repeat(160), &SMS).unwrap();
        assert_eq!(e.parts.len(), 1);
        assert_eq!(e.parts[0].len(), 160);

        let e = encode(&"a".repeat(161), &SMS).unwrap();
        assert_eq!(e.parts.len(), 2);
        assert_eq!(e.parts[0].len(), 153);
        assert_eq!(e.parts[1].len(), 8);

        let e = encode(&"a".repeat(153 * 3), &SMS).unwrap();
        assert_eq!(e.parts.len(), 3);
        let e = encode(&"a".repeat(153 * 3 + 1), &SMS).unwrap();
        assert_eq!(e.parts.len(), 4);
    }

    #[test]
    fn escape_characters_count_double_and_are_never_split() {
        // 80 × '{' = 160 septets: still one message.
        let e = encode(&"{".repeat(80), &SMS).unwrap();
        assert_eq!(e.parts.len(), 1);
        assert_eq!(e.parts[0].len(), 160);

        // 81 × '{' = 162 septets: two parts; 76 escapes (152 septets) fit the first part,
        // the 77th would straddle the 153-septet boundary.
        let e = encode(&"{".repeat(81), &SMS).unwrap();
        assert_eq!(e.coding, Coding::Gsm7);
        assert_eq!(e.parts.len(), 2);
        assert_eq!(e.parts[0].len(), 152);
        assert_eq!(e.parts[1].len(), 10);
        for p in &e.parts {
            assert_ne!(*p.last().unwrap(), ESC, "a part ends with a bare ESC");
            assert_eq!(p[0], ESC, "a part starts inside an escape sequence");
        }

        // An odd offset: one plain septet first, so a naive cut at 153 would split an escape.
        let text = format!("x{}", "€".repeat(100));
        let e = encode(&text, &SMS).unwrap();
        let joined: Vec<u8> = e.parts.concat();
        assert_eq!(decode_gsm(&joined).unwrap(), text);
        for p in &e.parts {
            assert!(p.len() <= 153);
            assert_ne!(*p.last().unwrap(), ESC);
            assert!(decode_gsm(p).is_some(), "each part decodes on its own");
        }
    }

    #[test]
    fn japanese_is_ucs2() {
        let text = "ご利用の暗証番号は 7305 です";
        let e = encode(text, &SMS).unwrap();
        assert_eq!(e.coding, Coding::Ucs2);
        assert_eq!(e.coding.data_coding(), 0x08);
        assert_eq!(e.parts, vec![utf16be(text)]);
    }

    #[test]
    fn one_non_gsm_character_makes_the_whole_text_ucs2() {
        let e = encode("PIN 1234 ç", &SMS).unwrap();
        assert_eq!(e.coding, Coding::Ucs2);
        assert_eq!(decode_ucs2(&e.parts[0]), "PIN 1234 ç");
    }

    #[test]
    fn ucs2_splits_at_67_units() {
        let e = encode(&"あ".repeat(70), &SMS).unwrap();
        assert_eq!(e.parts.len(), 1);
        assert_eq!(e.parts[0].len(), 140);

        let e = encode(&"あ".repeat(71), &SMS).unwrap();
        assert_eq!(e.parts.len(), 2);
        assert_eq!(e.parts[0].len(), 134);
        assert_eq!(e.parts[1].len(), 8);

        let e = encode(&"暗".repeat(200), &SMS).unwrap();
        assert_eq!(e.parts.len(), 3);
        let text: String = e.parts.iter().map(|p| decode_ucs2(p)).collect();
        assert_eq!(text, "暗".repeat(200));
    }

    #[test]
    fn surrogate_pairs_are_never_split() {
        // 66 units + a pair: the pair does not fit the 67-unit part, so it moves whole.
        let text = format!("{}😀{}", "あ".repeat(66), "い".repeat(10));
        let e = encode(&text, &SMS).unwrap();
        assert_eq!(e.coding, Coding::Ucs2);
        assert_eq!(e.parts.len(), 2);
        assert_eq!(e.parts[0].len(), 132);
        let rebuilt: String = e.parts.iter().map(|p| decode_ucs2(p)).collect();
        assert_eq!(rebuilt, text);
        let first_of_second = u16::from_be_bytes([e.parts[1][0], e.parts[1][1]]);
        assert!(
            !(0xDC00..=0xDFFF).contains(&first_of_second),
            "a part starts with a low surrogate"
        );
    }

    #[test]
    fn too_many_parts_or_a_long_ussd_is_refused() {
        assert_eq!(
            encode(&"a".repeat(153 * 255 + 1), &SMS),
            Err(EncodeError::TooLong { parts: 256 })
        );
        assert!(encode(&"a".repeat(153 * 255), &SMS).is_ok());

        assert_eq!(encode(&"a".repeat(182), &USSD).unwrap().parts.len(), 1);
        assert!(encode(&"a".repeat(183), &USSD).is_err());
        assert_eq!(encode(&"あ".repeat(80), &USSD).unwrap().parts.len(), 1);
        assert!(encode(&"あ".repeat(81), &USSD).is_err());
    }

    #[test]
    fn udh_numbers_parts() {
        assert_eq!(concat_udh(0x2A, 3, 2), [0x05, 0x00, 0x03, 0x2A, 3, 2]);
    }
}
