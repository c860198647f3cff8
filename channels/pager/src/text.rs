//! Fitting a rendered message to a pager: the PIN-first trimming convention, character
//! clean-up and reply scrubbing.
//!
//! # The PIN-first convention
//!
//! The daemon renders the message with the PIN on the **first line** (for example
//! `PIN 4921 7730 5561` then `Amount 1200 JPY`, `Payee ...`, `Expires ...`). Pagers carry
//! little text (80 to 240 characters is common), so a driver that must shorten a message keeps
//! that first line whole and cuts from the end of the rest:
//!
//! 1. Line breaks (`\r\n`, `\r`, `\n`) split the text into lines; blank lines are dropped and
//!    each line loses its trailing white space. The "first line" is the first non-blank line.
//! 2. If the first line alone is longer than the limit, the message is refused
//!    ([`FitError::FirstLineTooLong`]): cutting it could cut the PIN.
//! 3. Otherwise the lines are joined with the protocol's separator (a space where the message
//!    travels as one line, a newline where it may have several) and cut at the limit, counted
//!    in characters; the cut never reaches into the first line.

use std::fmt;

/// Why a text cannot be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// Nothing but white space.
    #[error("the message is empty")]
    Empty,
    /// The first line, which carries the PIN, is longer than the pager takes.
    #[error("the first line has {len} characters, the pager takes {max}")]
    FirstLineTooLong { len: usize, max: usize },
}

/// Shorten `text` to at most `max_chars` characters, keeping its first line whole (see the
/// module documentation). `separator` joins the kept lines: `" "` for one-line protocols
/// (SNPP `MESS`, TAP), `"\n"` for multi-line ones (SNPP `DATA`).
pub fn fit_pin_first(text: &str, max_chars: usize, separator: &str) -> Result<String, FitError> {
    let mut lines = split_lines(text)
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty());
    let first = lines.next().ok_or(FitError::Empty)?;
    let first_len = first.chars().count();
    if first_len > max_chars {
        return Err(FitError::FirstLineTooLong {
            len: first_len,
            max: max_chars,
        });
    }
    let mut out = String::from(first);
    let mut len = first_len;
    let sep_len = separator.chars().count();
    for line in lines {
        let line_len = line.chars().count();
        if len + sep_len + line_len <= max_chars {
            out.push_str(separator);
            out.push_str(line);
            len += sep_len + line_len;
            continue;
        }
        let room = max_chars.saturating_sub(len + sep_len);
        if room > 0 {
            let part: String = line.chars().take(room).collect();
            let part = part.trim_end();
            if !part.is_empty() {
                out.push_str(separator);
                out.push_str(part);
            }
        }
        break;
    }
    Ok(out)
}

/// Split on `\r\n`, `\r` or `\n`.
pub(crate) fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// Keep line breaks, turn tabs and other control characters into spaces (SNPP: the text
/// travels in CRLF-terminated lines, UTF-8 passes through).
pub(crate) fn clean_for_snpp(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '\r' || c == '\n' || !c.is_control() {
                c
            } else {
                ' '
            }
        })
        .collect()
}

/// Keep line breaks, turn tabs and control characters into spaces and anything outside
/// printable 7-bit ASCII into `?` (TAP lines are 7-bit; control characters frame blocks).
pub(crate) fn clean_for_tap(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\r' | '\n' => c,
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .collect()
}

/// A reply text from a peer with every run of digits that shares four consecutive digits
/// with the message replaced, so a peer that echoes the message cannot put the PIN in an
/// error, not even with other digits glued to it.
pub(crate) fn scrub(reply: &str, message: &str) -> String {
    let mut out = String::with_capacity(reply.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        // A run of ASCII digits is ASCII: every 4-byte window is a string.
        let shared = digits.len() >= 4
            && (0..=digits.len() - 4).any(|at| message.contains(&digits[at..at + 4]));
        if shared {
            out.push_str("[redacted]");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in reply.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            if c.is_control() {
                out.push(' ');
            } else {
                out.push(c);
            }
        }
    }
    flush(&mut digits, &mut out);
    const MAX: usize = 200;
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect();
        out.push('…');
    }
    out
}

/// A short, body-free description of a text for logs.
pub(crate) struct Shape<'a>(pub &'a str);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} chars, {} lines",
            self.0.chars().count(),
            split_lines(self.0).count()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched_apart_from_blank_lines() {
        assert_eq!(
            fit_pin_first("PIN 1234\r\n\r\nAmount 5\n", 100, "\n").unwrap(),
            "PIN 1234\nAmount 5"
        );
        assert_eq!(
            fit_pin_first("PIN 1234\nAmount 5", 100, " ").unwrap(),
            "PIN 1234 Amount 5"
        );
        assert_eq!(fit_pin_first("\n  \nPIN 1\n", 5, " ").unwrap(), "PIN 1");
    }

    #[test]
    fn the_first_line_survives_and_the_rest_is_cut() {
        let text =
            "PIN 4921 7730 5561\nAmount 12000 JPY\nPayee Example Shop Ltd\nExpires 2026-12-01";
        let fitted = fit_pin_first(text, 40, " ").unwrap();
        assert_eq!(fitted, "PIN 4921 7730 5561 Amount 12000 JPY Paye");
        assert_eq!(fitted.chars().count(), 40);
        // Exactly the first line.
        assert_eq!(fit_pin_first(text, 18, " ").unwrap(), "PIN 4921 7730 5561");
        // Room for the separator only: nothing dangling.
        assert_eq!(fit_pin_first(text, 19, " ").unwrap(), "PIN 4921 7730 5561");
        assert_eq!(
            fit_pin_first(text, 20, "\n").unwrap(),
            "PIN 4921 7730 5561\nA"
        );
        // Cut on a space: no trailing blank.
        assert_eq!(fit_pin_first("PIN 1\nab cd", 9, " ").unwrap(), "PIN 1 ab");
    }

    #[test]
    fn a_first_line_longer_than_the_pager_is_refused() {
        assert_eq!(
            fit_pin_first("PIN 4921 7730 5561\nmore", 10, " "),
            Err(FitError::FirstLineTooLong { len: 18, max: 10 })
        );
        assert_eq!(fit_pin_first(" \r\n ", 10, " "), Err(FitError::Empty));
    }

    #[test]
    fn characters_count_not_bytes() {
        let fitted = fit_pin_first("PIN 1\nééééé", 8, " ").unwrap();
        assert_eq!(fitted, "PIN 1 éé");
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean_for_tap("a\tb\u{2}é\r\nc"), "a b ?\r\nc");
        assert_eq!(clean_for_snpp("a\tb\u{2}é\nc"), "a b é\nc");
    }

    #[test]
    fn scrub_hides_digits_from_the_message() {
        let msg = "PIN 4921 7730 5561 for 5551000";
        assert_eq!(
            scrub("550 bad text PIN 4921 in 123", msg),
            "550 bad text PIN [redacted] in 123"
        );
        assert_eq!(scrub("550 Invalid Pager ID", msg), "550 Invalid Pager ID");
        assert_eq!(scrub("511 id 9999999", msg), "511 id 9999999");
    }

    #[test]
    fn scrub_hides_message_digits_glued_to_others() {
        // Found by the snpp_reply fuzz target: the reply to SEND echoed the PIN with a
        // digit after it, and the whole run was not in the message, so it was kept.
        let msg = "PIN 4921773055614410 for 3000 JPY";
        let said = scrub(
            "354 Begin InMessage Sent S49217730556144102 OK, GBoodbye",
            msg,
        );
        assert_eq!(said, "354 Begin InMessage Sent S[redacted] OK, GBoodbye");
        assert_eq!(scrub("550 id 5551000", msg), "550 id 5551000");
    }

    #[test]
    fn lines_split_on_every_break() {
        let v: Vec<_> = split_lines("a\r\nb\rc\nd").collect();
        assert_eq!(v, ["a", "b", "c", "d"]);
        let v: Vec<_> = split_lines("").collect();
        assert_eq!(v, [""]);
    }
}
