//! SMTP replies: how a refusal is classified, and the queue id in the reply to DATA.

use std::fmt;

use pinpost_channel_core::SendError;

/// What the reply answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `MAIL FROM`.
    MailFrom,
    /// `RCPT TO`.
    RcptTo,
    /// The `DATA` command (before any content is sent).
    Data,
    /// The final dot: the content has been sent.
    EndOfData,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
        })
    }
}

/// The server's text, made safe for an error string and a log line: printable ASCII only,
/// at most 200 characters.
pub(crate) fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out.trim().to_owned()
}

/// Classify a negative (or unexpected) reply to a command of the mail transaction:
/// 4xx → `Transient`, 5xx → `Permanent { code: "smtp_<code>" }`. Anything else (a reply
/// code the stage does not allow, such as 250 to DATA) is a protocol error → `Transient`.
pub fn classify_reply(stage: Stage, code: u16, text: &str) -> SendError {
    let reason = format!("{stage} refused: {code} {}", sanitize(text));
    match code {
        400..=499 => SendError::Transient { reason },
        500..=599 => SendError::Permanent {
            code: format!("smtp_{code}"),
            reason,
        },
        _ => SendError::Transient {
            reason: format!("{stage}: unexpected reply {code} {}", sanitize(text)),
        },
    }
}

/// The queue id in the text of a 250 reply to the end of DATA (the lines without the reply
/// code), when the server gives one:
///
/// - `Ok: queued as 4Zx1Yz3ABC` (Postfix, and any `queued as <id>`)
/// - `OK id=1tXYZ-000ABC-12` (Exim; any `id=<id>` or `InternalId=<id>`)
/// - `4A1B2C3D012345 Message accepted for delivery` (Sendmail)
/// - `OK 1700000000 a1b2c3si1234567abc.123 - gsmtp` (Gmail)
/// - `Ok 0100018c2f3e4d5a-...-000000` (Amazon SES)
///
/// An RFC 3463 enhanced status code at the start of a line is skipped. `None` when nothing
/// matches (the channel then uses the Message-ID).
pub fn parse_queue_id(text: &str) -> Option<String> {
    for line in text.lines() {
        if let Some(id) = queue_id_in_line(strip_enhanced_code(line.trim())) {
            return Some(id);
        }
    }
    None
}

fn strip_enhanced_code(line: &str) -> &str {
    let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
    let parts: Vec<&str> = first.split('.').collect();
    if parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    {
        rest.trim_start()
    } else {
        line
    }
}

/// The token at the start of `s`: letters, digits, `.`, `-`, `_`, `+`, `/`, `=`, `@`;
/// without trailing dots.
fn token(s: &str) -> Option<String> {
    let t: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "._-+/=@".contains(*c))
        .collect();
    let t = t.trim_end_matches('.');
    (!t.is_empty() && t.len() <= 128).then(|| t.to_owned())
}

fn has_digit(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
}

fn queue_id_in_line(line: &str) -> Option<String> {
    let lower = line.to_ascii_lowercase();

    if let Some(i) = lower.find("queued as")
        && let Some(id) = token(&line[i + "queued as".len()..])
    {
        return Some(id);
    }

    for key in ["internalid=", "id="] {
        let mut from = 0;
        while let Some(rel) = lower[from..].find(key) {
            let i = from + rel;
            let at_word_start = i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric();
            if at_word_start && let Some(id) = token(&line[i + key.len()..]) {
                return Some(id);
            }
            from = i + key.len();
        }
    }

    let words: Vec<&str> = line.split_whitespace().collect();

    // Gmail: "OK <timestamp> <id> - gsmtp"
    if let Some(pos) = words.iter().position(|w| w.eq_ignore_ascii_case("gsmtp"))
        && pos >= 2
        && words[pos - 1] == "-"
        && let Some(id) = token(words[pos - 2]).filter(|t| has_digit(t))
    {
        return Some(id);
    }

    // Sendmail: "<id> Message accepted for delivery"
    if lower.contains("message accepted for delivery")
        && let Some(first) = words.first()
        && let Some(id) = token(first).filter(|t| t.len() >= 8 && has_digit(t))
        && !first.eq_ignore_ascii_case("message")
        && id == *first
    {
        return Some(id);
    }

    // "Ok <long id>" (Amazon SES and others).
    if words.len() == 2
        && words[0].trim_end_matches(':').eq_ignore_ascii_case("ok")
        && let Some(id) = token(words[1]).filter(|t| t.len() >= 12 && has_digit(t))
        && id == words[1]
    {
        return Some(id);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_of_common_servers() {
        let cases = [
            ("2.0.0 Ok: queued as 4Zx1Yz3ABCz1", Some("4Zx1Yz3ABCz1")),
            ("Ok: queued as ABC123", Some("ABC123")),
            ("2.0.0 OK: queued as <A1B2C3>.", None),
            ("OK id=1tXYZ9-000ABC-12", Some("1tXYZ9-000ABC-12")),
            (
                "2.0.0 4A1B2C3D012345 Message accepted for delivery",
                Some("4A1B2C3D012345"),
            ),
            (
                "2.0.0 OK  1700000000 a1b2c3si1234567abc.123 - gsmtp",
                Some("a1b2c3si1234567abc.123"),
            ),
            (
                "Ok 0100018c2f3e4d5a-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-000000",
                Some("0100018c2f3e4d5a-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-000000"),
            ),
            (
                "2.6.0 <x@y> [InternalId=1099511627777, Hostname=EX01] Queued mail for delivery",
                Some("1099511627777"),
            ),
            ("Message accepted for delivery", None),
            ("OK", None),
            ("2.0.0 Ok", None),
            ("Ok thanks", None),
            ("", None),
            ("2.0.0 Ok: queued as\r\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_queue_id(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn multi_line_replies_are_searched_line_by_line() {
        assert_eq!(
            parse_queue_id("Ok\nqueued as XYZ789").as_deref(),
            Some("XYZ789")
        );
    }

    #[test]
    fn no_word_id_false_positives() {
        // "valid=" or "uid=" is not "id=".
        assert_eq!(parse_queue_id("Ok valid=yes uid=5"), None);
    }

    #[test]
    fn classification() {
        match classify_reply(Stage::RcptTo, 451, "4.3.0 try later") {
            SendError::Transient { reason } => {
                assert_eq!(reason, "RCPT TO refused: 451 4.3.0 try later")
            }
            other => panic!("{other:?}"),
        }
        match classify_reply(Stage::RcptTo, 550, "5.1.1 no such user") {
            SendError::Permanent { code, reason } => {
                assert_eq!(code, "smtp_550");
                assert!(reason.contains("5.1.1 no such user"));
            }
            other => panic!("{other:?}"),
        }
        match classify_reply(Stage::EndOfData, 554, "rejected") {
            SendError::Permanent { code, .. } => assert_eq!(code, "smtp_554"),
            other => panic!("{other:?}"),
        }
        for code in [421, 450, 452] {
            assert_eq!(
                classify_reply(Stage::MailFrom, code, "").class(),
                "transient"
            );
        }
        assert_eq!(
            classify_reply(Stage::Data, 250, "ok?").class(),
            "transient",
            "a reply the stage does not allow"
        );
    }

    #[test]
    fn server_text_is_sanitized() {
        let long = "x".repeat(500);
        let s = sanitize(&format!("a\r\nb\u{1b}[31m{long}"));
        assert!(s.starts_with("a  b [31m"));
        assert!(s.chars().count() <= 201);
    }
}
