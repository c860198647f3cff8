//! Message text as a handset would show it: GSM 03.38 (unpacked septets), UCS-2, Latin-1,
//! and the user data header that carries concatenation references.

use std::fmt::Write as _;

use crate::gsm::{BASIC as GSM_BASIC, ESC as GSM_ESCAPE, extension_char as gsm_extension};

/// The alphabet a `data_coding` value selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alphabet {
    /// GSM 03.38 default alphabet, one septet per octet (SMPP's unpacked form).
    Gsm,
    /// ISO-8859-1.
    Latin1,
    /// UCS-2 (UTF-16 big-endian; surrogate pairs are joined).
    Ucs2,
    /// 8-bit data: shown as lowercase hex.
    Binary,
}

impl Alphabet {
    /// Maps an SMPP `data_coding` octet to the alphabet used to show the message.
    pub(crate) fn from_data_coding(dcs: u8) -> Self {
        match dcs {
            0x00 | 0x01 => Alphabet::Gsm,
            0x03 => Alphabet::Latin1,
            0x08 => Alphabet::Ucs2,
            0x02 | 0x04 => Alphabet::Binary,
            // GSM 03.38 general data coding groups: bits 3..2 select the alphabet.
            0x10..=0x3f => match (dcs >> 2) & 0x03 {
                0 => Alphabet::Gsm,
                1 => Alphabet::Binary,
                2 => Alphabet::Ucs2,
                _ => Alphabet::Latin1,
            },
            // Message class group: bit 2 selects 8-bit data.
            0xf0..=0xff => {
                if dcs & 0x04 != 0 {
                    Alphabet::Binary
                } else {
                    Alphabet::Gsm
                }
            }
            _ => Alphabet::Latin1,
        }
    }
}

/// Decodes `bytes` written in `data_coding` into `out`, stopping after `max_chars` characters.
pub(crate) fn decode_into(out: &mut String, data_coding: u8, bytes: &[u8], max_chars: usize) {
    let mut budget = max_chars;
    let mut push = |out: &mut String, c: char| -> bool {
        if budget == 0 {
            return false;
        }
        budget -= 1;
        out.push(c);
        true
    };
    match Alphabet::from_data_coding(data_coding) {
        Alphabet::Gsm => {
            let mut iter = bytes.iter().map(|b| b & 0x7f);
            while let Some(septet) = iter.next() {
                let c = if septet == GSM_ESCAPE {
                    match iter.next() {
                        // An escape followed by an unknown septet shows the basic character.
                        Some(next) => gsm_extension(next).unwrap_or(GSM_BASIC[usize::from(next)]),
                        // A trailing escape (a split sequence at the very end) shows as a space.
                        None => ' ',
                    }
                } else {
                    GSM_BASIC[usize::from(septet)]
                };
                if !push(out, c) {
                    return;
                }
            }
        }
        Alphabet::Latin1 => {
            for &b in bytes {
                if !push(out, char::from(b)) {
                    return;
                }
            }
        }
        Alphabet::Ucs2 => {
            let units = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            for c in char::decode_utf16(units) {
                if !push(out, c.unwrap_or(char::REPLACEMENT_CHARACTER)) {
                    return;
                }
            }
        }
        Alphabet::Binary => {
            for &b in bytes {
                if budget < 2 {
                    return;
                }
                budget -= 2;
                let _ = write!(out, "{b:02x}");
            }
        }
    }
}

/// Decodes a whole message into a new string.
pub(crate) fn decode(data_coding: u8, bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    decode_into(&mut out, data_coding, bytes, usize::MAX);
    out
}

/// The concatenation reference of one part of a long message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Concat {
    /// Message reference (8-bit references are widened; they never collide with 16-bit ones
    /// in practice because one sender uses one kind).
    pub reference: u16,
    /// Number of parts, 1..=255.
    pub total: u8,
    /// This part's position, 1..=total.
    pub seq: u8,
}

/// Splits a short message whose esm_class has UDHI set into its concatenation header (if any)
/// and the user data that follows the header. A malformed header leaves the whole message as
/// user data.
pub(crate) fn split_udh(sm: &[u8]) -> (Option<Concat>, &[u8]) {
    let Some((&udhl, rest)) = sm.split_first() else {
        return (None, sm);
    };
    let udhl = usize::from(udhl);
    if rest.len() < udhl {
        return (None, sm);
    }
    let (mut ies, payload) = rest.split_at(udhl);
    let mut concat = None;
    while let [iei, len, tail @ ..] = ies {
        let len = usize::from(*len);
        if tail.len() < len {
            return (None, sm);
        }
        let (data, next) = tail.split_at(len);
        match (*iei, data) {
            (0x00, &[r, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from(r),
                    total,
                    seq,
                })
            }
            (0x08, &[hi, lo, total, seq]) => {
                concat = Some(Concat {
                    reference: u16::from_be_bytes([hi, lo]),
                    total,
                    seq,
                })
            }
            _ => {}
        }
        ies = next;
    }
    let concat = concat.filter(|c| c.total >= 1 && c.seq >= 1 && c.seq <= c.total);
    (concat, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_basic_and_escape_table() {
        // "Hi @£" then each escape-table character.
        let mut bytes = vec![0x48, 0x69, 0x20, 0x00, 0x01];
        for ext in [0x65, 0x3c, 0x3e, 0x28, 0x29, 0x40, 0x2f, 0x14, 0x3d] {
            bytes.extend_from_slice(&[0x1b, ext]);
        }
        assert_eq!(decode(0x00, &bytes), "Hi @£€[]{}|\\^~");
        assert_eq!(decode(0x01, &[0x11, 0x5b, 0x7f]), "_Äà");
    }

    #[test]
    fn gsm_truncates_by_characters() {
        let mut out = String::new();
        decode_into(&mut out, 0x00, &[0x1b, 0x65, 0x41, 0x42], 2);
        assert_eq!(out, "€A");
    }

    #[test]
    fn ucs2_with_surrogates_and_latin1() {
        let text = "暗証番号 😀";
        let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(decode(0x08, &bytes), text);
        assert_eq!(decode(0x03, &[0x63, 0x61, 0x66, 0xe9]), "café");
        assert_eq!(decode(0x04, &[0xde, 0xad]), "dead");
    }

    #[test]
    fn udh_8_and_16_bit_references() {
        let sm = [0x05, 0x00, 0x03, 0x2a, 0x03, 0x02, b'h', b'i'];
        let (c, payload) = split_udh(&sm);
        assert_eq!(
            c,
            Some(Concat {
                reference: 0x2a,
                total: 3,
                seq: 2
            })
        );
        assert_eq!(payload, b"hi");
        let sm = [0x06, 0x08, 0x04, 0x12, 0x34, 0x02, 0x01, b'x'];
        let (c, payload) = split_udh(&sm);
        assert_eq!(
            c,
            Some(Concat {
                reference: 0x1234,
                total: 2,
                seq: 1
            })
        );
        assert_eq!(payload, b"x");
        // Header longer than the message: everything is user data.
        let sm = [0x09, 0x00, 0x03];
        assert_eq!(split_udh(&sm), (None, &sm[..]));
        // A part number outside 1..=total is not a concatenation header.
        let sm = [0x05, 0x00, 0x03, 0x01, 0x02, 0x03, b'z'];
        assert_eq!(split_udh(&sm).0, None);
    }
}
