//! Result codes and responses: what a modem answers to one command.

use std::fmt;

/// A final result code: the line that ends the modem's answer to a command.
///
/// Only verbose codes (`ATV1`) are recognised; numeric codes (`ATV0`) are not, so drivers
/// send `ATV1` during their init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalResult {
    Ok,
    /// `CONNECT`, with whatever followed it on the line (`"14400/ARQ"`, or empty). The modem
    /// is in data mode after it.
    Connect(String),
    Error,
    Busy,
    NoCarrier,
    NoDialtone,
    NoAnswer,
    /// `DELAYED` (national redial rules forbid dialling this number now).
    Delayed,
    /// `BLACKLISTED` (national redial rules forbid dialling this number at all).
    Blacklisted,
    /// `+CME ERROR: <text>` or `+CMS ERROR: <text>` (GSM modems), with the text.
    CmeError(String),
}

impl FinalResult {
    /// Parse one line as a final result code, `None` if it is something else.
    pub fn parse(line: &str) -> Option<FinalResult> {
        let upper = line.trim().to_ascii_uppercase();
        let r = match upper.as_str() {
            "OK" => FinalResult::Ok,
            "ERROR" => FinalResult::Error,
            "BUSY" => FinalResult::Busy,
            "NO CARRIER" => FinalResult::NoCarrier,
            "NO DIALTONE" | "NO DIAL TONE" => FinalResult::NoDialtone,
            "NO ANSWER" => FinalResult::NoAnswer,
            "DELAYED" => FinalResult::Delayed,
            "BLACKLISTED" => FinalResult::Blacklisted,
            "CONNECT" => FinalResult::Connect(String::new()),
            _ => {
                // `upper` has the same byte positions as `trimmed` (ASCII upper-casing).
                let trimmed = line.trim();
                if upper.starts_with("CONNECT ") {
                    FinalResult::Connect(trimmed["CONNECT ".len()..].trim().to_owned())
                } else if upper.starts_with("+CME ERROR:") || upper.starts_with("+CMS ERROR:") {
                    FinalResult::CmeError(trimmed["+CME ERROR:".len()..].trim().to_owned())
                } else {
                    return None;
                }
            }
        };
        Some(r)
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, FinalResult::Ok)
    }
}

impl fmt::Display for FinalResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinalResult::Ok => f.write_str("OK"),
            FinalResult::Connect(s) if s.is_empty() => f.write_str("CONNECT"),
            FinalResult::Connect(s) => write!(f, "CONNECT {s}"),
            FinalResult::Error => f.write_str("ERROR"),
            FinalResult::Busy => f.write_str("BUSY"),
            FinalResult::NoCarrier => f.write_str("NO CARRIER"),
            FinalResult::NoDialtone => f.write_str("NO DIALTONE"),
            FinalResult::NoAnswer => f.write_str("NO ANSWER"),
            FinalResult::Delayed => f.write_str("DELAYED"),
            FinalResult::Blacklisted => f.write_str("BLACKLISTED"),
            FinalResult::CmeError(s) => write!(f, "+CME ERROR: {s}"),
        }
    }
}

/// The modem's answer to one command: the information lines it sent before the final
/// result code (`+FCO`, `+FCS:1,5,0,2,0,0,0,0`, `+FHS:00`, ...), in order, and that code.
///
/// Echo, empty lines, noise and unsolicited `RING`s are not in `lines`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub lines: Vec<String>,
    pub result: FinalResult,
}

impl Response {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether an information line equals `line` exactly (ignoring ASCII case), e.g. `+FCO`.
    pub fn has_line(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l.eq_ignore_ascii_case(line))
    }

    /// The text after `prefix` (ASCII case ignored) on the last information line that
    /// starts with it: `value("+FHS:")` on `+FHS:43` is `Some("43")`.
    pub fn value(&self, prefix: &str) -> Option<&str> {
        self.lines
            .iter()
            .rev()
            .find_map(|l| strip_prefix_ignore_case(l, prefix))
    }
}

/// `line` without `prefix`, comparing ASCII case-insensitively.
pub fn strip_prefix_ignore_case<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    if line.len() >= prefix.len()
        && line.is_char_boundary(prefix.len())
        && line[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(line[prefix.len()..].trim())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_final_codes() {
        assert_eq!(FinalResult::parse("OK"), Some(FinalResult::Ok));
        assert_eq!(FinalResult::parse(" ok "), Some(FinalResult::Ok));
        assert_eq!(
            FinalResult::parse("NO CARRIER"),
            Some(FinalResult::NoCarrier)
        );
        assert_eq!(
            FinalResult::parse("NO DIAL TONE"),
            Some(FinalResult::NoDialtone)
        );
        assert_eq!(
            FinalResult::parse("CONNECT 14400/ARQ"),
            Some(FinalResult::Connect("14400/ARQ".into()))
        );
        assert_eq!(
            FinalResult::parse("CONNECT"),
            Some(FinalResult::Connect(String::new()))
        );
        assert_eq!(
            FinalResult::parse("+CME ERROR: 10"),
            Some(FinalResult::CmeError("10".into()))
        );
        assert_eq!(FinalResult::parse("+FCO"), None);
        assert_eq!(FinalResult::parse("OKAY"), None);
        assert_eq!(FinalResult::parse("CONNECTED"), None);
    }

    #[test]
    fn values_by_prefix() {
        let r = Response {
            lines: vec!["+FCO".into(), "+FHS:00".into(), "+fhs:43".into()],
            result: FinalResult::Ok,
        };
        assert!(r.has_line("+fco"));
        assert_eq!(r.value("+FHS:"), Some("43"));
        assert_eq!(r.value("+FCS:"), None);
    }
}
