//! Provider references as receipts name them.
//!
//! SMSCs disagree with themselves about message ids: hex in submit_sm_resp and decimal in
//! the receipt text, upper or lower case, with or without leading zeros. Each reference
//! is stored under a normalised key and, when it reads as hex, under the decimal value of
//! that hex number as well. A receipt is looked up exactly first, then by those
//! alternatives (see `writer::find_part`).

/// Lower case, surrounding space trimmed, leading zeros removed ("0" stays "0").
pub fn key(raw: &str) -> String {
    let t = raw.trim();
    let stripped = t.trim_start_matches('0');
    let s = if stripped.is_empty() && !t.is_empty() {
        "0"
    } else {
        stripped
    };
    s.to_ascii_lowercase()
}

/// The decimal value of `raw` read as a hex number, when it is one (at most 32 digits)
/// and that differs from its key.
pub fn hex_as_decimal(raw: &str) -> Option<String> {
    let t = raw.trim();
    if t.is_empty() || t.len() > 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u128::from_str_radix(t, 16).ok()?;
    let d = v.to_string();
    (d != key(raw)).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(key("0001A2B"), "1a2b");
        assert_eq!(key(" 00 "), "0");
        assert_eq!(key("abc-DEF"), "abc-def");
        assert_eq!(hex_as_decimal("1A2B").as_deref(), Some("6699"));
        assert_eq!(hex_as_decimal("00ff").as_deref(), Some("255"));
        assert_eq!(hex_as_decimal("9"), None, "same in both bases");
        assert_eq!(hex_as_decimal("xyz"), None);
    }
}
