//! DLE transparency for data mode (fax page data, Class 1/2/2.0).
//!
//! In data mode a `<DLE>` (0x10) byte introduces a command: `<DLE><ETX>` ends the data,
//! `<DLE>,` `<DLE>;` `<DLE>.` are the Class 2.0 post-page messages (MPS, EOM, EOP). A 0x10
//! that belongs to the data is therefore sent twice (`<DLE><DLE>`). [`stuff_into`] does that
//! on the way to the modem; [`Unstuffer`] undoes it on the other side (a modem simulator,
//! or the DCE→DTE direction when receiving), stopping at the first command.

/// Data link escape.
pub const DLE: u8 = 0x10;
/// End of text: `<DLE><ETX>` ends a data block.
pub const ETX: u8 = 0x03;
/// Substitute: in Class 2.0 receive data, `<DLE><SUB>` stands for two 0x10 bytes.
pub const SUB: u8 = 0x1a;
/// Cancel.
pub const CAN: u8 = 0x18;
/// XON (DC1): flow control, "go on".
pub const XON: u8 = 0x11;
/// XOFF (DC3): flow control, "stop".
pub const XOFF: u8 = 0x13;

/// Append `data` to `out` with every 0x10 doubled.
pub fn stuff_into(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(data.len() + data.len() / 64 + 2);
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == DLE {
            out.extend_from_slice(&data[start..=i]);
            out.push(DLE);
            start = i + 1;
        }
    }
    out.extend_from_slice(&data[start..]);
}

/// `data` with every 0x10 doubled.
pub fn stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    stuff_into(data, &mut out);
    out
}

/// `<DLE>` followed by `command` (`b'.'` for EOP, `ETX` for end of data, ...).
pub fn command(command: u8) -> [u8; 2] {
    [DLE, command]
}

/// Undoes [`stuff_into`], chunk by chunk, and finds the command that ends the data.
///
/// A `<DLE>` at the end of one chunk is remembered and paired with the first byte of the
/// next, so the data may be split anywhere.
#[derive(Debug, Clone, Default)]
pub struct Unstuffer {
    pending_dle: bool,
    sub_is_double_dle: bool,
}

impl Unstuffer {
    /// An un-stuffer for the DTE→DCE direction: `<DLE><DLE>` is one 0x10, any other
    /// `<DLE>x` is a command.
    pub fn new() -> Self {
        Self::default()
    }

    /// An un-stuffer for Class 2.0 DCE→DTE data, where `<DLE><SUB>` also stands for two
    /// 0x10 bytes.
    pub fn with_sub_as_double_dle() -> Self {
        Self {
            pending_dle: false,
            sub_is_double_dle: true,
        }
    }

    /// Append the data bytes of `input` to `out`, up to the first command.
    ///
    /// Returns `Some((command, consumed))` when a `<DLE>x` command ended the data: `x` and
    /// how many bytes of `input` were used (the rest follows the data, e.g. the next AT
    /// command). Returns `None` when all of `input` was data.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<(u8, usize)> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            if self.pending_dle {
                self.pending_dle = false;
                match b {
                    DLE => out.push(DLE),
                    SUB if self.sub_is_double_dle => out.extend_from_slice(&[DLE, DLE]),
                    cmd => return Some((cmd, i)),
                }
            } else if b == DLE {
                self.pending_dle = true;
            } else {
                // Copy the run up to the next DLE in one go.
                let run_end = input[i..]
                    .iter()
                    .position(|&c| c == DLE)
                    .map_or(input.len(), |p| i + p);
                out.push(b);
                out.extend_from_slice(&input[i..run_end]);
                i = run_end;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing_doubles_dle_only() {
        assert_eq!(
            stuff(&[1, DLE, 2, DLE, DLE]),
            vec![1, DLE, DLE, 2, DLE, DLE, DLE, DLE]
        );
        assert_eq!(stuff(&[]), Vec::<u8>::new());
        assert_eq!(stuff(&[ETX, CAN]), vec![ETX, CAN]);
    }

    #[test]
    fn round_trip_split_anywhere() {
        let data: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
        let mut wire = stuff(&data);
        wire.extend_from_slice(&command(b'.'));
        wire.extend_from_slice(b"AT+FKS\r");
        for split in [1usize, 2, 3, 7, 64, 4096] {
            let mut u = Unstuffer::new();
            let mut out = Vec::new();
            let mut found = None;
            let mut offset = 0;
            for chunk in wire.chunks(split) {
                if let Some((cmd, used)) = u.feed(chunk, &mut out) {
                    found = Some((cmd, offset + used));
                    break;
                }
                offset += chunk.len();
            }
            let (cmd, used) = found.expect("command found");
            assert_eq!(cmd, b'.');
            assert_eq!(out, data, "split {split}");
            assert_eq!(&wire[used..], b"AT+FKS\r");
        }
    }

    #[test]
    fn sub_means_two_dles_when_asked() {
        let mut out = Vec::new();
        let r = Unstuffer::with_sub_as_double_dle().feed(&[1, DLE, SUB, 2, DLE, ETX], &mut out);
        assert_eq!(r, Some((ETX, 6)));
        assert_eq!(out, vec![1, DLE, DLE, 2]);
        let mut out = Vec::new();
        let r = Unstuffer::new().feed(&[1, DLE, SUB], &mut out);
        assert_eq!(r, Some((SUB, 3)));
    }
}
