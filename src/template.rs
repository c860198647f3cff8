//! Message text templates.
//!
//! Placeholders: `{pin}` (grouped in fours for reading), `{pin_raw}`, `{amount}`, `{payee}`,
//! `{expires}`. A section in square brackets is dropped when any placeholder inside it has
//! no value, so one template serves deliveries with and without amount or expiry:
//! `PIN {pin}[ for {amount}][ at {payee}][, valid until {expires}]`.
//! `{{`, `}}`, `[[` and `]]` write the literal character.

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Pin,
    PinRaw,
    Amount,
    Payee,
    Expires,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
    Optional(Vec<Piece>),
}

/// A parsed template; parse once, render per message.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// The values a template may use. The PIN is borrowed from its secret.
pub struct Values<'a> {
    pub pin: &'a SecretString,
    pub amount: Option<&'a str>,
    pub payee: Option<&'a str>,
    pub expires: Option<&'a str>,
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut stack: Vec<Vec<Piece>> = vec![Vec::new()];
        let mut text = String::new();
        let mut chars = src.chars().peekable();
        let flush = |text: &mut String, stack: &mut Vec<Vec<Piece>>| {
            if !text.is_empty() {
                stack
                    .last_mut()
                    .expect("stack")
                    .push(Piece::Text(std::mem::take(text)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '{' | '}' | '[' | ']' if chars.peek() == Some(&c) => {
                    chars.next();
                    text.push(c);
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err("unclosed '{'".into()),
                        }
                    }
                    let field = match name.as_str() {
                        "pin" => Field::Pin,
                        "pin_raw" => Field::PinRaw,
                        "amount" => Field::Amount,
                        "payee" => Field::Payee,
                        "expires" => Field::Expires,
                        other => {
                            return Err(format!(
                                "unknown placeholder {{{other}}}: use pin, pin_raw, amount, payee or expires"
                            ));
                        }
                    };
                    flush(&mut text, &mut stack);
                    stack.last_mut().expect("stack").push(Piece::Field(field));
                }
                '}' => return Err("unmatched '}' (write '}}' for a literal brace)".into()),
                '[' => {
                    flush(&mut text, &mut stack);
                    if stack.len() > 1 {
                        return Err("optional sections cannot nest".into());
                    }
                    stack.push(Vec::new());
                }
                ']' => {
                    flush(&mut text, &mut stack);
                    if stack.len() < 2 {
                        return Err("unmatched ']' (write ']]' for a literal bracket)".into());
                    }
                    let inner = stack.pop().expect("stack");
                    stack
                        .last_mut()
                        .expect("stack")
                        .push(Piece::Optional(inner));
                }
                _ => text.push(c),
            }
        }
        flush(&mut text, &mut stack);
        if stack.len() != 1 {
            return Err("unclosed '['".into());
        }
        let pieces = stack.pop().expect("stack");
        let has_pin = pieces
            .iter()
            .any(|p| matches!(p, Piece::Field(Field::Pin | Field::PinRaw)));
        if !has_pin {
            return Err(
                "the template must contain {pin} or {pin_raw} outside optional sections".into(),
            );
        }
        Ok(Template { pieces })
    }

    /// Render into a secret; intermediate buffers holding the PIN are wiped.
    pub fn render(&self, v: &Values<'_>) -> SecretString {
        let mut out = String::with_capacity(160);
        render_into(&self.pieces, v, &mut out);
        SecretString::from(out)
    }
}

fn value_of(f: Field, v: &Values<'_>, out: &mut String) -> bool {
    match f {
        Field::Pin => {
            group_pin(v.pin.expose_secret(), out);
            true
        }
        Field::PinRaw => {
            out.push_str(v.pin.expose_secret());
            true
        }
        Field::Amount => v.amount.map(|s| out.push_str(s)).is_some(),
        Field::Payee => v.payee.map(|s| out.push_str(s)).is_some(),
        Field::Expires => v.expires.map(|s| out.push_str(s)).is_some(),
    }
}

fn render_into(pieces: &[Piece], v: &Values<'_>, out: &mut String) {
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Field(f) => {
                value_of(*f, v, out);
            }
            Piece::Optional(inner) => {
                let mut section = String::new();
                let complete = inner.iter().all(|p| match p {
                    Piece::Text(t) => {
                        section.push_str(t);
                        true
                    }
                    Piece::Field(f) => value_of(*f, v, &mut section),
                    Piece::Optional(_) => true,
                });
                if complete {
                    out.push_str(&section);
                }
                section.zeroize();
            }
        }
    }
}

/// "4921773055614410" -> "4921 7730 5561 4410"; a shorter last group stays at the end.
pub fn group_pin(pin: &str, out: &mut String) {
    for (i, c) in pin.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> SecretString {
        SecretString::from("4921773055614410".to_owned())
    }

    #[test]
    fn renders_all_fields_and_drops_missing_sections() {
        let t = Template::parse(&crate::config::default_template()).unwrap();
        let p = pin();
        let full = t.render(&Values {
            pin: &p,
            amount: Some("3000 JPY"),
            payee: Some("Example Shop"),
            expires: Some("2026-12-01 09:00 +09:00"),
        });
        assert_eq!(
            full.expose_secret(),
            "PIN 4921 7730 5561 4410 for 3000 JPY at Example Shop, valid until 2026-12-01 09:00 +09:00"
        );
        let bare = t.render(&Values {
            pin: &p,
            amount: None,
            payee: None,
            expires: None,
        });
        assert_eq!(bare.expose_secret(), "PIN 4921 7730 5561 4410");
    }

    #[test]
    fn escapes_and_errors() {
        let t = Template::parse("{{x}} [[{pin_raw}]]").unwrap();
        let p = pin();
        let r = t.render(&Values {
            pin: &p,
            amount: None,
            payee: None,
            expires: None,
        });
        assert_eq!(r.expose_secret(), "{x} [4921773055614410]");
        assert!(
            Template::parse("no pin here")
                .unwrap_err()
                .contains("{pin}")
        );
        assert!(
            Template::parse("[{pin}]").is_err(),
            "pin only inside an optional section"
        );
        assert!(
            Template::parse("{pin} {nope}")
                .unwrap_err()
                .contains("nope")
        );
        assert!(Template::parse("{pin} [a [b]]").is_err());
        assert!(Template::parse("{pin} [a").is_err());
        assert!(Template::parse("{pin} }").is_err());
        assert!(Template::parse("{pin").is_err());
    }

    #[test]
    fn groups_odd_lengths() {
        let mut s = String::new();
        group_pin("123456", &mut s);
        assert_eq!(s, "1234 56");
    }
}
