//! PDU framing for the loopback SMSC over rusmpp's typed PDUs.
//!
//! rusmpp's `CommandCodec` ends the stream at the first body it cannot decode and, with its
//! `tracing` feature (switched on by rusmppc), logs whole PDUs at DEBUG, short_message included.
//! The SMSC must answer a malformed body with generic_nack and go on, and must never log message
//! text, so it frames PDUs itself (command_length first, one frame split off at a time) and
//! hands each complete frame to rusmpp's typed decoder, which does not log.

use bytes::{Buf, BufMut, BytesMut};
use rusmpp::{
    Command,
    decode::DecodeWithLength,
    encode::{Length, owned::Encode},
};
use tokio_util::codec::{Decoder, Encoder};

/// The SMPP header: command_length, command_id, command_status, sequence_number.
pub(crate) const HEADER_LEN: usize = 16;

/// Largest PDU accepted: a submit_sm with a 64 KiB message_payload and room for other TLVs.
pub(crate) const MAX_PDU_LEN: usize = 70 * 1024;

/// One inbound frame.
// Moved once per PDU straight into its handler; boxing the command would allocate per PDU.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A PDU rusmpp decoded.
    Command(Command),
    /// A frame with a valid length whose body did not decode; answered with generic_nack.
    Malformed {
        command_id: u32,
        sequence_number: u32,
    },
}

/// The byte stream no longer holds PDUs: the connection cannot continue.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// command_length outside 16..=MAX_PDU_LEN.
    #[error("invalid command_length {length}")]
    Length {
        length: u32,
        /// The sequence number from the broken header, for the generic_nack.
        sequence_number: u32,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits SMPP frames off a byte buffer and encodes responses into one.
#[derive(Debug, Default)]
pub(crate) struct SmppCodec;

impl Decoder for SmppCodec {
    type Item = Inbound;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = |at: usize| u32::from_be_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
        let length = word(0);
        let len = length as usize;
        if !(HEADER_LEN..=MAX_PDU_LEN).contains(&len) {
            return Err(FrameError::Length {
                length,
                sequence_number: word(12),
            });
        }
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let command_id = word(4);
        let sequence_number = word(12);
        let mut frame = src.split_to(len);
        frame.advance(4);
        Ok(Some(match Command::decode(&mut frame, len - 4) {
            Ok((command, _)) => Inbound::Command(command),
            Err(_) => Inbound::Malformed {
                command_id,
                sequence_number,
            },
        }))
    }
}

impl Encoder<&Command> for SmppCodec {
    type Error = std::io::Error;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        encode(command, dst);
        Ok(())
    }
}

/// Appends one PDU to `dst`.
pub(crate) fn encode(command: &Command, dst: &mut BytesMut) {
    let body = command.length();
    dst.reserve(4 + body);
    // A PDU the SMSC builds is far below 4 GiB.
    dst.put_u32((4 + body) as u32);
    Encode::encode(command, dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::{CommandStatus, Pdu};

    fn frame(command: &Command) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(command, &mut buf);
        buf
    }

    #[test]
    fn splits_frames_and_waits_for_the_rest() {
        let mut buf = frame(&Command::new(CommandStatus::EsmeRok, 7, Pdu::EnquireLink));
        buf.extend_from_slice(&frame(&Command::new(CommandStatus::EsmeRok, 8, Pdu::Unbind))[..10]);
        let mut codec = SmppCodec;
        match codec.decode(&mut buf).unwrap() {
            Some(Inbound::Command(c)) => assert_eq!(c.sequence_number(), 7),
            other => panic!("unexpected {other:?}"),
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn malformed_body_keeps_framing() {
        // enquire_link must have no body; a 2-byte body makes rusmpp refuse it (pdu None) or
        // fail; a bind_transmitter whose strings lack NUL terminators fails to decode.
        let mut buf = BytesMut::new();
        buf.put_u32(20);
        buf.put_u32(0x0000_0002);
        buf.put_u32(0);
        buf.put_u32(42);
        buf.put_slice(b"abcd");
        buf.extend_from_slice(&frame(&Command::new(
            CommandStatus::EsmeRok,
            43,
            Pdu::EnquireLink,
        )));
        let mut codec = SmppCodec;
        match codec.decode(&mut buf).unwrap() {
            Some(Inbound::Malformed {
                command_id,
                sequence_number,
            }) => {
                assert_eq!((command_id, sequence_number), (2, 42));
            }
            other => panic!("unexpected {other:?}"),
        }
        match codec.decode(&mut buf).unwrap() {
            Some(Inbound::Command(c)) => assert_eq!(c.sequence_number(), 43),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn broken_length_is_fatal() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_u32(0x15);
        buf.put_u32(0);
        buf.put_u32(9);
        let err = SmppCodec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Length {
                length: 3,
                sequence_number: 9
            }
        ));
    }
}
