//! A T.4 Modified Huffman (one-dimensional, "G3 1-D") encoder.
//!
//! ITU-T T.4 §4.1: each row is a sequence of runs of alternating colour, starting with
//! white (a white run of length 0 when the row starts black). A run is coded as zero or more
//! make-up codes (multiples of 64) followed by exactly one terminating code (0–63), from the
//! white or black table. Runs longer than 2560 repeat the 2560 make-up code. Make-up codes
//! 1792–2560 are shared by both colours (T.4 Table 3 extension).
//!
//! Page structure (§4.1.2–4.1.4): an EOL (`0000 0000 0001`) before every row, and after the
//! last row RTC, six EOLs. Zero fill may precede an EOL; with [`MhOptions::align_eol`] the
//! encoder fills so that each row's EOL ends on a byte boundary, which keeps every row
//! starting on a byte (TIFF `T4Options` bit 2, and what most fax software produces), and
//! RTC starts on a byte boundary, six EOLs packed into nine bytes.
//!
//! Bit order: codes are produced first-bit-first. [`BitOrder::LsbFirst`] puts the first
//! bit of the line in the least significant bit of each byte, which is what a Class 2.0
//! modem takes with `AT+FBO=0` (a UART sends the LSB first) and TIFF `FillOrder=2`;
//! [`BitOrder::MsbFirst`] is TIFF `FillOrder=1` and what most decoders read natively.
//!
//! The tables below are transcribed from T.4 Tables 2 and 3 as strings of bits.

use crate::page::Bitmap;

/// How bits are packed into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitOrder {
    /// First bit in the least significant bit (fax modems with `+FBO=0`, TIFF FillOrder 2).
    LsbFirst,
    /// First bit in the most significant bit (TIFF FillOrder 1).
    MsbFirst,
}

/// Encoder options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MhOptions {
    pub bit_order: BitOrder,
    /// Fill with zeros before each EOL so that it ends on a byte boundary.
    pub align_eol: bool,
    /// End with RTC (six EOLs). Phase C data carries it; a TIFF strip does not.
    pub rtc: bool,
}

impl MhOptions {
    /// What goes to a Class 2.0 modem with `AT+FBO=0`: LSB first, aligned EOLs, no RTC
    /// (the modem appends RTC when it gets the post-page command, T.32; HylaFAX's
    /// `Class2SendRTC` default).
    pub const MODEM: MhOptions = MhOptions {
        bit_order: BitOrder::LsbFirst,
        align_eol: true,
        rtc: false,
    };
    /// Complete phase C data as it goes down the line: [`MODEM`](Self::MODEM) plus RTC.
    pub const PHASE_C: MhOptions = MhOptions {
        bit_order: BitOrder::LsbFirst,
        align_eol: true,
        rtc: true,
    };
    /// A TIFF Class F strip: LSB first (FillOrder 2), aligned EOLs (T4Options 4), no RTC.
    pub const TIFF: MhOptions = MhOptions {
        bit_order: BitOrder::LsbFirst,
        align_eol: true,
        rtc: false,
    };
}

#[derive(Clone, Copy)]
struct Code {
    bits: u16,
    len: u8,
}

/// A code word written as its bits, first bit first: `code("0111")`.
const fn code(s: &str) -> Code {
    let b = s.as_bytes();
    let mut bits = 0u16;
    let mut i = 0;
    while i < b.len() {
        bits = (bits << 1) | (b[i] - b'0') as u16;
        i += 1;
    }
    Code {
        bits,
        len: b.len() as u8,
    }
}

const EOL: Code = code("000000000001");

/// White terminating codes, run lengths 0–63 (T.4 Table 2).
#[rustfmt::skip]
const WHITE_TERMINATING: [Code; 64] = [
    code("00110101"), code("000111"), code("0111"), code("1000"),
    code("1011"), code("1100"), code("1110"), code("1111"),
    code("10011"), code("10100"), code("00111"), code("01000"),
    code("001000"), code("000011"), code("110100"), code("110101"),
    code("101010"), code("101011"), code("0100111"), code("0001100"),
    code("0001000"), code("0010111"), code("0000011"), code("0000100"),
    code("0101000"), code("0101011"), code("0010011"), code("0100100"),
    code("0011000"), code("00000010"), code("00000011"), code("00011010"),
    code("00011011"), code("00010010"), code("00010011"), code("00010100"),
    code("00010101"), code("00010110"), code("00010111"), code("00101000"),
    code("00101001"), code("00101010"), code("00101011"), code("00101100"),
    code("00101101"), code("00000100"), code("00000101"), code("00001010"),
    code("00001011"), code("01010010"), code("01010011"), code("01010100"),
    code("01010101"), code("00100100"), code("00100101"), code("01011000"),
    code("01011001"), code("01011010"), code("01011011"), code("01001010"),
    code("01001011"), code("00110010"), code("00110011"), code("00110100"),
];

/// Black terminating codes, run lengths 0–63 (T.4 Table 2).
#[rustfmt::skip]
const BLACK_TERMINATING: [Code; 64] = [
    code("0000110111"), code("010"), code("11"), code("10"),
    code("011"), code("0011"), code("0010"), code("00011"),
    code("000101"), code("000100"), code("0000100"), code("0000101"),
    code("0000111"), code("00000100"), code("00000111"), code("000011000"),
    code("0000010111"), code("0000011000"), code("0000001000"), code("00001100111"),
    code("00001101000"), code("00001101100"), code("00000110111"), code("00000101000"),
    code("00000010111"), code("00000011000"), code("000011001010"), code("000011001011"),
    code("000011001100"), code("000011001101"), code("000001101000"), code("000001101001"),
    code("000001101010"), code("000001101011"), code("000011010010"), code("000011010011"),
    code("000011010100"), code("000011010101"), code("000011010110"), code("000011010111"),
    code("000001101100"), code("000001101101"), code("000011011010"), code("000011011011"),
    code("000001010100"), code("000001010101"), code("000001010110"), code("000001010111"),
    code("000001100100"), code("000001100101"), code("000001010010"), code("000001010011"),
    code("000000100100"), code("000000110111"), code("000000111000"), code("000000100111"),
    code("000000101000"), code("000001011000"), code("000001011001"), code("000000101011"),
    code("000000101100"), code("000001011010"), code("000001100110"), code("000001100111"),
];

/// White make-up codes, run lengths 64, 128, ... 1728 (T.4 Table 3).
#[rustfmt::skip]
const WHITE_MAKEUP: [Code; 27] = [
    code("11011"), code("10010"), code("010111"), code("0110111"),
    code("00110110"), code("00110111"), code("01100100"), code("01100101"),
    code("01101000"), code("01100111"), code("011001100"), code("011001101"),
    code("011010010"), code("011010011"), code("011010100"), code("011010101"),
    code("011010110"), code("011010111"), code("011011000"), code("011011001"),
    code("011011010"), code("011011011"), code("010011000"), code("010011001"),
    code("010011010"), code("011000"), code("010011011"),
];

/// Black make-up codes, run lengths 64, 128, ... 1728 (T.4 Table 3).
#[rustfmt::skip]
const BLACK_MAKEUP: [Code; 27] = [
    code("0000001111"), code("000011001000"), code("000011001001"), code("000001011011"),
    code("000000110011"), code("000000110100"), code("000000110101"), code("0000001101100"),
    code("0000001101101"), code("0000001001010"), code("0000001001011"), code("0000001001100"),
    code("0000001001101"), code("0000001110010"), code("0000001110011"), code("0000001110100"),
    code("0000001110101"), code("0000001110110"), code("0000001110111"), code("0000001010010"),
    code("0000001010011"), code("0000001010100"), code("0000001010101"), code("0000001011010"),
    code("0000001011011"), code("0000001100100"), code("0000001100101"),
];

/// Make-up codes for both colours, run lengths 1792, 1856, ... 2560 (T.4 Table 3, extended).
#[rustfmt::skip]
const EXTENDED_MAKEUP: [Code; 13] = [
    code("00000001000"), code("00000001100"), code("00000001101"), code("000000010010"),
    code("000000010011"), code("000000010100"), code("000000010101"), code("000000010110"),
    code("000000010111"), code("000000011100"), code("000000011101"), code("000000011110"),
    code("000000011111"),
];

/// Writes code words first bit first into the most significant free bit.
struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    /// Bits waiting in `acc` (always < 8 between calls).
    pending: u32,
}

impl BitWriter {
    fn put(&mut self, c: Code) {
        self.acc = (self.acc << c.len) | u32::from(c.bits);
        self.pending += u32::from(c.len);
        while self.pending >= 8 {
            self.pending -= 8;
            self.out.push((self.acc >> self.pending) as u8);
        }
        self.acc &= (1 << self.pending) - 1;
    }

    fn eol(&mut self, align: bool) {
        if align {
            // Zero fill so that the 12-bit EOL ends on a byte boundary.
            let fill = (16 - (self.pending + 12) % 8) % 8;
            self.put(Code {
                bits: 0,
                len: fill as u8,
            });
        }
        self.put(EOL);
    }

    fn pad_to_byte(&mut self) {
        if self.pending > 0 {
            let pad = 8 - self.pending;
            self.put(Code {
                bits: 0,
                len: pad as u8,
            });
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.pad_to_byte();
        self.out
    }
}

fn put_run(w: &mut BitWriter, mut run: u32, black: bool) {
    while run >= 64 {
        let makeup = (run / 64 * 64).min(2560);
        let idx = (makeup / 64 - 1) as usize;
        let c = if makeup > 1728 {
            EXTENDED_MAKEUP[idx - 27]
        } else if black {
            BLACK_MAKEUP[idx]
        } else {
            WHITE_MAKEUP[idx]
        };
        w.put(c);
        run -= makeup;
    }
    let t = if black {
        BLACK_TERMINATING[run as usize]
    } else {
        WHITE_TERMINATING[run as usize]
    };
    w.put(t);
}

/// The first pixel at or after `from` that is not of colour `black`, or `width`.
fn next_change(row: &[u8], from: u32, black: bool, width: u32) -> u32 {
    let mut x = from;
    while x < width {
        let i = (x / 8) as usize;
        let mut b = if black { !row[i] } else { row[i] };
        b &= 0xff >> (x % 8);
        if b != 0 {
            return (i as u32 * 8 + b.leading_zeros()).min(width);
        }
        x = (i as u32 + 1) * 8;
    }
    width
}

fn encode_row(w: &mut BitWriter, row: &[u8], width: u32) {
    let mut x = 0;
    let mut black = false;
    loop {
        let next = next_change(row, x, black, width);
        put_run(w, next - x, black);
        if next >= width {
            break;
        }
        x = next;
        black = !black;
    }
}

/// Encode a page: EOL before every row, RTC after the last if asked.
pub fn encode(bitmap: &Bitmap, opts: &MhOptions) -> Vec<u8> {
    let mut w = BitWriter {
        // A mostly white A4 row codes to about 4 bytes.
        out: Vec::with_capacity(bitmap.height() as usize * 8 + 16),
        acc: 0,
        pending: 0,
    };
    for y in 0..bitmap.height() {
        w.eol(opts.align_eol);
        encode_row(&mut w, bitmap.row(y), bitmap.width());
    }
    if opts.rtc {
        if opts.align_eol {
            w.pad_to_byte();
        }
        for _ in 0..6 {
            w.put(EOL);
        }
    }
    let mut out = w.finish();
    if opts.bit_order == BitOrder::LsbFirst {
        for b in &mut out {
            *b = b.reverse_bits();
        }
    }
    out
}

/// Encode a page as a Class 2.0 modem takes it with `AT+FBO=0` ([`MhOptions::MODEM`]: no
/// RTC), before DLE stuffing.
pub fn encode_for_modem(bitmap: &Bitmap) -> Vec<u8> {
    encode(bitmap, &MhOptions::MODEM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(data: &[u8]) -> String {
        data.iter().map(|b| format!("{b:08b}")).collect()
    }

    #[test]
    fn tables_are_prefix_free() {
        // Within one colour, no code may be a prefix of another (EOL included).
        for (term, makeup) in [
            (&WHITE_TERMINATING, &WHITE_MAKEUP),
            (&BLACK_TERMINATING, &BLACK_MAKEUP),
        ] {
            let all: Vec<String> = term
                .iter()
                .chain(makeup.iter())
                .chain(EXTENDED_MAKEUP.iter())
                .chain(std::iter::once(&EOL))
                .map(|c| format!("{:0width$b}", c.bits, width = c.len as usize))
                .collect();
            for (i, a) in all.iter().enumerate() {
                for (j, b) in all.iter().enumerate() {
                    assert!(i == j || !b.starts_with(a.as_str()), "{a} prefixes {b}");
                }
            }
        }
    }

    #[test]
    fn white_row_and_structure() {
        let bmp = Bitmap::new(1728, 1);
        let opts = MhOptions {
            bit_order: BitOrder::MsbFirst,
            align_eol: false,
            rtc: true,
        };
        let s = bits(&encode(&bmp, &opts));
        // EOL, white 1728 (make-up 1728 + terminating 0), then six EOLs, padded.
        let want = format!(
            "000000000001{}{}{}",
            "010011011",
            "00110101",
            "000000000001".repeat(6)
        );
        assert!(s.starts_with(&want), "{s}");
        assert!(s[want.len()..].chars().all(|c| c == '0'));
    }

    #[test]
    fn aligned_eols_end_on_bytes() {
        let mut bmp = Bitmap::new(1728, 3);
        bmp.set(5, 1);
        let out = encode(
            &bmp,
            &MhOptions {
                bit_order: BitOrder::MsbFirst,
                align_eol: true,
                rtc: true,
            },
        );
        let s = bits(&out);
        // Every row's EOL ends at a multiple of 8 bits.
        let mut from = 0;
        for _ in 0..3 {
            let p = s[from..].find("000000000001").expect("an EOL per row");
            let end = from + p + 12;
            assert_eq!(end % 8, 0, "EOL ending at bit {end}");
            from = end;
        }
        // RTC: from a byte boundary, six packed EOLs, nine bytes.
        assert_eq!(&s[s.len() - 72..], "000000000001".repeat(6));
        assert!(
            s[from..s.len() - 72].find('1').is_some(),
            "the last row is coded"
        );
    }

    #[test]
    fn lsb_first_is_bit_reversed() {
        let mut bmp = Bitmap::new(1728, 2);
        bmp.set(100, 0);
        bmp.set(1727, 1);
        let msb = encode(
            &bmp,
            &MhOptions {
                bit_order: BitOrder::MsbFirst,
                ..MhOptions::PHASE_C
            },
        );
        let lsb = encode(&bmp, &MhOptions::PHASE_C);
        assert_eq!(msb.len(), lsb.len());
        assert!(msb.iter().zip(&lsb).all(|(a, b)| a.reverse_bits() == *b));
        // RTC at the end, in HylaFAX's LSB-first spelling of six packed EOLs.
        assert_eq!(
            &lsb[lsb.len() - 9..],
            &[0x00, 0x08, 0x80, 0x00, 0x08, 0x80, 0x00, 0x08, 0x80]
        );
    }

    #[test]
    fn next_change_finds_runs() {
        let row = [0b0000_0111, 0b1111_0000, 0xff];
        assert_eq!(next_change(&row, 0, false, 24), 5);
        assert_eq!(next_change(&row, 5, true, 24), 12);
        assert_eq!(next_change(&row, 12, false, 24), 16);
        assert_eq!(next_change(&row, 16, true, 24), 24);
        assert_eq!(next_change(&row, 16, true, 20), 20);
    }
}
