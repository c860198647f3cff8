//! The message on the wire: PGP/MIME (RFC 3156) around the encrypted notice, or a plain
//! text/plain message for a device that allows plaintext.
//!
//! ```text
//! From, To, Subject, Date, Message-ID, MIME-Version, Auto-Submitted: auto-generated
//! Content-Type: multipart/encrypted; boundary="..."; protocol="application/pgp-encrypted"
//!
//! --boundary
//! Content-Type: application/pgp-encrypted
//! Content-Description: PGP/MIME version identification
//!
//! Version: 1
//! --boundary
//! Content-Type: application/octet-stream; name="encrypted.asc"
//! Content-Description: OpenPGP encrypted message
//! Content-Disposition: inline; filename="encrypted.asc"
//!
//! -----BEGIN PGP MESSAGE-----
//! ...
//! -----END PGP MESSAGE-----
//! --boundary--
//! ```
//!
//! The encrypted payload is itself a MIME entity (`text/plain; charset=utf-8`, the body
//! with its transfer encoding), as RFC 3156 §4 asks. Headers outside it are in the clear.

use lettre::message::header::{
    ContentDisposition, ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue,
};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use rand08::RngCore;
use rand08::rngs::OsRng;
use zeroize::Zeroizing;

/// `Content-Description` (RFC 2045 §8), which lettre does not define.
#[derive(Debug, Clone)]
struct ContentDescription(String);

impl Header for ContentDescription {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Content-Description")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// What goes in the body.
pub(crate) enum Content {
    /// An ASCII-armored OpenPGP message (CRLF line ends).
    Encrypted { armored: String },
    /// The notice itself, unencrypted (a device with `allow_plaintext` and no key).
    Plain { body: Zeroizing<String> },
}

/// A message ready for SMTP.
pub(crate) struct Outgoing {
    /// The Message-ID without angle brackets.
    pub message_id: String,
    pub from: Address,
    pub to: Address,
    /// The whole message (headers and body), CRLF line ends, not yet dot-stuffed.
    pub bytes: Zeroizing<Vec<u8>>,
}

/// The MIME entity that gets encrypted: `text/plain; charset=utf-8` with whatever transfer
/// encoding the body needs (7bit, quoted-printable or base64).
pub(crate) fn inner_entity(body: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(SinglePart::plain(body.to_owned()).formatted())
}

/// A fresh Message-ID (without angle brackets): 128 random bits and the time, at `domain`.
pub(crate) fn new_message_id(domain: &str) -> String {
    let mut random = [0u8; 16];
    OsRng.fill_bytes(&mut random);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut id = String::with_capacity(64);
    id.push_str("pinpost.");
    id.push_str(&format!("{millis:x}."));
    for b in random {
        id.push_str(&format!("{b:02x}"));
    }
    id.push('@');
    id.push_str(domain);
    id
}

/// Build the message. `dkim` signs it when set.
pub(crate) fn build(
    from: &Mailbox,
    to: &Address,
    subject: &str,
    message_id: &str,
    content: Content,
    dkim: Option<&lettre::message::dkim::DkimConfig>,
) -> Result<Outgoing, String> {
    let builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to.clone()))
        .subject(subject)
        .date_now()
        .message_id(Some(format!("<{message_id}>")));
    let mut message = match content {
        Content::Encrypted { armored } => {
            let version = SinglePart::builder()
                .header(ContentType::parse("application/pgp-encrypted").map_err(|e| e.to_string())?)
                .header(ContentDescription(
                    "PGP/MIME version identification".to_owned(),
                ))
                .body(
                    Body::new_with_encoding(
                        "Version: 1\r\n".to_owned(),
                        ContentTransferEncoding::SevenBit,
                    )
                    .map_err(|_| "version part is not 7bit".to_owned())?,
                );
            let payload = SinglePart::builder()
                .header(
                    ContentType::parse("application/octet-stream; name=\"encrypted.asc\"")
                        .map_err(|e| e.to_string())?,
                )
                .header(ContentDescription("OpenPGP encrypted message".to_owned()))
                .header(ContentDisposition::inline_with_name("encrypted.asc"))
                .body(
                    Body::new_with_encoding(armored, ContentTransferEncoding::SevenBit)
                        .map_err(|_| "armored payload is not 7bit".to_owned())?,
                );
            builder
                .multipart(
                    MultiPart::encrypted("application/pgp-encrypted".to_owned())
                        .singlepart(version)
                        .singlepart(payload),
                )
                .map_err(|e| e.to_string())?
        }
        Content::Plain { body } => builder
            .singlepart(SinglePart::plain(String::clone(&body)))
            .map_err(|e| e.to_string())?,
    };
    message.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str("Auto-Submitted"),
        "auto-generated".to_owned(),
    ));
    if let Some(dkim) = dkim {
        message.sign(dkim);
    }
    Ok(Outgoing {
        message_id: message_id.to_owned(),
        from: from.email.clone(),
        to: to.clone(),
        bytes: Zeroizing::new(message.formatted()),
    })
}

/// The headers DKIM signs. Not Content-Type: lettre keeps a multipart's Content-Type with
/// the body, out of reach of its signer, so a signature over it would never verify (the body
/// hash covers the parts and their boundaries).
pub(crate) fn dkim_signed_headers() -> Vec<HeaderName> {
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Auto-Submitted",
    ]
    .into_iter()
    .map(HeaderName::new_from_ascii_str)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn text(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// The parts of a multipart body, each "headers CRLF CRLF body" without the CRLF that
    /// precedes the next delimiter.
    fn parts(body: &str, boundary: &str) -> Vec<String> {
        let body = format!("\r\n{body}");
        let delim = format!("\r\n--{boundary}");
        let mut chunks: Vec<&str> = body.split(delim.as_str()).collect();
        assert!(chunks.len() >= 3, "no parts");
        let last = chunks.pop().unwrap();
        assert!(last.starts_with("--"), "no close delimiter");
        chunks
            .into_iter()
            .skip(1) // the preamble
            .map(|c| {
                c.strip_prefix("\r\n")
                    .expect("CRLF after the delimiter")
                    .to_owned()
            })
            .collect()
    }

    fn header<'a>(block: &'a str, name: &str) -> Option<&'a str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        block
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim())
    }

    fn split_head(msg: &str) -> (&str, &str) {
        msg.split_once("\r\n\r\n").unwrap()
    }

    fn sample(content: Content) -> Outgoing {
        build(
            &Mailbox::from_str("PIN Service <pins@example.net>").unwrap(),
            &Address::from_str("sub@example.org").unwrap(),
            "Your payment PIN",
            "pinpost.1.abc@example.net",
            content,
            None,
        )
        .unwrap()
    }

    #[test]
    fn pgp_mime_structure_follows_rfc_3156() {
        let armored =
            "-----BEGIN PGP MESSAGE-----\r\n\r\nwV4DAAAA\r\n=abcd\r\n-----END PGP MESSAGE-----\r\n";
        let out = sample(Content::Encrypted {
            armored: armored.to_owned(),
        });
        let msg = text(&out.bytes);
        assert!(msg.is_ascii());
        assert!(msg.split("\r\n").all(|l| l.len() <= 998));
        assert!(!msg.replace("\r\n", "").contains('\n'), "bare LF");
        let (head, body) = split_head(&msg);
        assert_eq!(
            header(head, "Message-ID"),
            Some("<pinpost.1.abc@example.net>")
        );
        assert_eq!(header(head, "MIME-Version"), Some("1.0"));
        assert_eq!(header(head, "Auto-Submitted"), Some("auto-generated"));
        assert_eq!(header(head, "Subject"), Some("Your payment PIN"));
        assert_eq!(header(head, "To"), Some("sub@example.org"));
        assert!(header(head, "Date").is_some());
        // Content-Type may be folded over several lines.
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        let ct = header(&unfolded, "Content-Type").unwrap();
        assert!(ct.starts_with("multipart/encrypted;"), "{ct}");
        assert!(
            ct.contains("protocol=\"application/pgp-encrypted\""),
            "{ct}"
        );
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .unwrap()
            .trim_matches('"');

        let parts = parts(body, boundary);
        assert_eq!(parts.len(), 2, "exactly two parts");
        let (h1, b1) = split_head(&parts[0]);
        assert_eq!(
            header(h1, "Content-Type"),
            Some("application/pgp-encrypted")
        );
        assert_eq!(b1.trim_end(), "Version: 1");
        let (h2, b2) = split_head(&parts[1]);
        let ct2 = header(h2, "Content-Type").unwrap();
        assert!(ct2.starts_with("application/octet-stream"), "{ct2}");
        assert_eq!(header(h2, "Content-Transfer-Encoding"), Some("7bit"));
        assert_eq!(format!("{}\r\n", b2.trim_end()), armored);
        assert!(body.trim_end().ends_with(&format!("--{boundary}--")));
    }

    #[test]
    fn plain_message_is_text_plain() {
        let out = sample(Content::Plain {
            body: Zeroizing::new("Your PIN 1234 ünïcode".to_owned()),
        });
        let msg = text(&out.bytes);
        assert!(msg.is_ascii(), "non-ASCII bodies get a transfer encoding");
        let (head, _) = split_head(&msg);
        assert!(
            header(head, "Content-Type")
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(out.to.to_string(), "sub@example.org");
        assert_eq!(out.from.to_string(), "pins@example.net");
    }

    #[test]
    fn inner_entity_is_a_mime_part() {
        let e = inner_entity("PIN 42\nline two");
        let e = text(&e);
        let (head, body) = split_head(&e);
        assert!(
            header(head, "Content-Type")
                .unwrap()
                .starts_with("text/plain; charset=utf-8")
        );
        assert!(header(head, "Content-Transfer-Encoding").is_some());
        assert_eq!(body, "PIN 42\r\nline two\r\n");
    }

    #[test]
    fn message_ids_are_unique_and_well_formed() {
        let a = new_message_id("example.net");
        let b = new_message_id("example.net");
        assert_ne!(a, b);
        assert!(a.starts_with("pinpost.") && a.ends_with("@example.net"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_graphic() && c != '<' && c != '>')
        );
    }
}
