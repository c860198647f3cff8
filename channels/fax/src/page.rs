//! The PIN notice as a fax page: text → 1-bit bitmap, 1728 pels wide.
//!
//! # The body convention
//!
//! The daemon renders the notice as plain text; this module only lays it out:
//!
//! - Lines of the body (split at `\n`, a trailing `\r` dropped) are lines on the page, top
//!   to bottom, left-aligned. Tabs become four spaces; other control characters are dropped.
//! - **The first non-empty line is the PIN line.** It is set large (28 pt DejaVu Sans Bold,
//!   shrunk to fit the width but never below 16 pt), and every run of 8 or more digits in it
//!   is grouped in fours (`7305917735186203` → `7305 9177 3518 6203`).
//! - The other lines (amount, payee, expiry, issuer, ...) are set in 13 pt DejaVu Sans.
//!   Empty lines leave a blank line; lines too wide for the page wrap at spaces.
//! - The page is ISO A4 length (297 mm: 2286 rows fine, 1143 standard). A body that does not
//!   fit is refused ([`RenderError::TooLong`]) rather than cut.
//!
//! Characters missing from DejaVu Sans (CJK among them) render as the font's empty box.
//!
//! Geometry: 1728 pels over 215 mm (204 pels per inch) across; 196 lines per inch (fine,
//! 7.7 lines/mm) or 98 (standard, 3.85 lines/mm) down. Glyphs are rasterised with
//! `ab_glyph` at that anisotropic scale and thresholded at 50 % coverage.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};

/// Pels per row of an ISO A4 fax page (T.4).
pub const PAGE_WIDTH: u32 = 1728;
/// Horizontal resolution, pels per inch (8.04 pels/mm).
pub const X_DPI: f32 = 204.0;

/// Size of the PIN line, points.
pub const PIN_POINTS: f32 = 28.0;
/// Smallest size the PIN line is shrunk to before it wraps, points.
pub const PIN_MIN_POINTS: f32 = 16.0;
/// Size of the other lines, points.
pub const BODY_POINTS: f32 = 13.0;

const MARGIN_X_MM: f32 = 12.0;
const MARGIN_TOP_MM: f32 = 15.0;
const MARGIN_BOTTOM_MM: f32 = 10.0;
const LINE_SPACING: f32 = 1.35;

static REGULAR_TTF: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static BOLD_TTF: &[u8] = include_bytes!("../fonts/DejaVuSans-Bold.ttf");

/// Vertical resolution of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Resolution {
    /// 196 lines per inch (T.4 "fine", `VR=1`).
    #[default]
    Fine,
    /// 98 lines per inch (T.4 "standard"/"normal", `VR=0`).
    Standard,
}

impl Resolution {
    /// Nominal lines per inch.
    pub fn lines_per_inch(self) -> u32 {
        match self {
            Resolution::Fine => 196,
            Resolution::Standard => 98,
        }
    }

    /// Rows of an A4 page (297 mm).
    pub fn a4_rows(self) -> u32 {
        match self {
            Resolution::Fine => 2286,
            Resolution::Standard => 1143,
        }
    }

    /// The Class 2.0 `VR` session parameter value.
    pub fn vr(self) -> u8 {
        match self {
            Resolution::Fine => 1,
            Resolution::Standard => 0,
        }
    }

    fn y_dpi(self) -> f32 {
        self.lines_per_inch() as f32
    }
}

/// A 1-bit image: rows of packed bits, most significant bit leftmost, 1 = black. Its
/// memory is zeroed on drop (a page shows the PIN).
#[derive(Clone, PartialEq, Eq)]
pub struct Bitmap {
    width: u32,
    height: u32,
    stride: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the pixels: a page shows the PIN.
        f.debug_struct("Bitmap")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl Drop for Bitmap {
    fn drop(&mut self) {
        // The pixels show the PIN.
        zeroize::Zeroize::zeroize(&mut self.data);
    }
}

impl Bitmap {
    /// An all-white bitmap.
    pub fn new(width: u32, height: u32) -> Self {
        let stride = (width as usize).div_ceil(8);
        Self {
            width,
            height,
            stride,
            data: vec![0; stride * height as usize],
        }
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `y` as packed bits (bits past `width` in the last byte are 0).
    pub fn row(&self, y: u32) -> &[u8] {
        let start = y as usize * self.stride;
        &self.data[start..start + self.stride]
    }

    /// Row `y`, writable. Keep the bits past `width` at 0.
    pub fn row_mut(&mut self, y: u32) -> &mut [u8] {
        let start = y as usize * self.stride;
        &mut self.data[start..start + self.stride]
    }

    pub fn get(&self, x: u32, y: u32) -> bool {
        x < self.width
            && y < self.height
            && self.data[y as usize * self.stride + x as usize / 8] & (0x80 >> (x % 8)) != 0
    }

    /// Make a pixel black; outside the bitmap this does nothing.
    pub fn set(&mut self, x: i32, y: i32) {
        if x >= 0 && y >= 0 && (x as u32) < self.width && (y as u32) < self.height {
            let (x, y) = (x as usize, y as usize);
            self.data[y * self.stride + x / 8] |= 0x80 >> (x % 8);
        }
    }

    /// How many pixels are black.
    pub fn black_pixels(&self) -> u64 {
        self.data.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// The bitmap with every row twice (a standard-resolution page at fine aspect).
    pub fn doubled_rows(&self) -> Bitmap {
        let mut out = Bitmap::new(self.width, self.height * 2);
        for y in 0..self.height {
            let row = self.row(y).to_vec();
            out.row_mut(2 * y).copy_from_slice(&row);
            out.row_mut(2 * y + 1).copy_from_slice(&row);
        }
        out
    }
}

/// Why a page could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the message has no text")]
    Empty,
    #[error("the message needs {needed} rows, an A4 page has {available}")]
    TooLong { needed: u32, available: u32 },
    #[error("embedded font unusable: {0}")]
    Font(String),
    #[error("image encoding failed: {0}")]
    Encode(String),
}

struct Fonts {
    regular: FontRef<'static>,
    bold: FontRef<'static>,
}

fn fonts() -> Result<&'static Fonts, RenderError> {
    static FONTS: OnceLock<Result<Fonts, String>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            Ok(Fonts {
                regular: FontRef::try_from_slice(REGULAR_TTF).map_err(|e| e.to_string())?,
                bold: FontRef::try_from_slice(BOLD_TTF).map_err(|e| e.to_string())?,
            })
        })
        .as_ref()
        .map_err(|e| RenderError::Font(e.clone()))
}

/// A font at a point size and page resolution.
struct Face<'f> {
    font: &'f FontRef<'static>,
    scale: PxScale,
    points: f32,
    y_dpi: f32,
}

impl<'f> Face<'f> {
    fn new(font: &'f FontRef<'static>, points: f32, resolution: Resolution) -> Self {
        // PxScale is the pixel height of ascent - descent, not of the em.
        let upem = font.units_per_em().unwrap_or(2048.0);
        let height_per_em = font.height_unscaled() / upem;
        let y_dpi = resolution.y_dpi();
        Self {
            font,
            scale: PxScale {
                x: points / 72.0 * X_DPI * height_per_em,
                y: points / 72.0 * y_dpi * height_per_em,
            },
            points,
            y_dpi,
        }
    }

    fn ascent(&self) -> f32 {
        self.font.as_scaled(self.scale).ascent()
    }

    /// Distance between baselines, rows.
    fn line_height(&self) -> f32 {
        self.points / 72.0 * self.y_dpi * LINE_SPACING
    }

    fn glyphs<'a>(&'a self, text: &'a str) -> impl Iterator<Item = (GlyphId, f32)> + 'a {
        let scaled = self.font.as_scaled(self.scale);
        let mut caret = 0.0f32;
        let mut prev: Option<GlyphId> = None;
        text.chars().map(move |c| {
            let id = self.font.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            let x = caret;
            caret += scaled.h_advance(id);
            prev = Some(id);
            (id, x)
        })
    }

    fn width(&self, text: &str) -> f32 {
        let scaled = self.font.as_scaled(self.scale);
        self.glyphs(text)
            .last()
            .map_or(0.0, |(id, x)| x + scaled.h_advance(id))
    }

    fn draw(&self, bmp: &mut Bitmap, x0: f32, baseline: f32, text: &str) {
        for (id, x) in self.glyphs(text) {
            let glyph = id.with_scale_and_position(self.scale, point(x0 + x, baseline));
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let b = outline.px_bounds();
                let (bx, by) = (b.min.x as i32, b.min.y as i32);
                outline.draw(|x, y, coverage| {
                    if coverage >= 0.5 {
                        bmp.set(bx + x as i32, by + y as i32);
                    }
                });
            }
        }
    }
}

/// Group every run of 8 or more ASCII digits in fours: `7305917735186203` →
/// `7305 9177 3518 6203`. Shorter runs and other text are left alone.
pub fn group_digits(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 4);
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 8 {
            for (i, c) in run.chars().enumerate() {
                if i > 0 && i % 4 == 0 {
                    out.push(' ');
                }
                out.push(c);
            }
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in line.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The body as page lines: control characters dropped, tabs expanded, leading and trailing
/// empty lines removed. The first line is the PIN line.
fn page_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .split('\n')
        .map(|l| {
            let mut s = String::with_capacity(l.len());
            for c in l.chars() {
                match c {
                    '\t' => s.push_str("    "),
                    c if c.is_control() => {}
                    c => s.push(c),
                }
            }
            s.trim_end().to_owned()
        })
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let first = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    lines.drain(..first);
    lines
}

/// Split `line` into pieces no wider than `max` pixels, at spaces where possible.
fn wrap(face: &Face<'_>, line: &str, max: f32) -> Vec<String> {
    if face.width(line) <= max {
        return vec![line.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for word in line.split(' ') {
        let candidate = if current.is_empty() {
            word.to_owned()
        } else {
            format!("{current} {word}")
        };
        if face.width(&candidate) <= max {
            current = candidate;
            continue;
        }
        if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        // A word wider than the line is cut where it must be.
        let mut piece = String::new();
        for c in word.chars() {
            piece.push(c);
            if face.width(&piece) > max && piece.chars().count() > 1 {
                piece.pop();
                out.push(std::mem::take(&mut piece));
                piece.push(c);
            }
        }
        current = piece;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Lay out and rasterise the notice (see the module documentation for the convention).
pub fn render_page(text: &str, resolution: Resolution) -> Result<Bitmap, RenderError> {
    let lines = page_lines(text);
    let Some((pin_line, rest)) = lines.split_first() else {
        return Err(RenderError::Empty);
    };
    let fonts = fonts()?;
    let y_dpi = resolution.y_dpi();
    let margin_x = MARGIN_X_MM / 25.4 * X_DPI;
    let avail = PAGE_WIDTH as f32 - 2.0 * margin_x;
    let height = resolution.a4_rows();
    let bottom = height as f32 - MARGIN_BOTTOM_MM / 25.4 * y_dpi;

    // The PIN line: shrink to fit, then wrap.
    let pin_text = group_digits(pin_line);
    let mut pin_face = Face::new(&fonts.bold, PIN_POINTS, resolution);
    let natural = pin_face.width(&pin_text);
    if natural > avail {
        let points = (PIN_POINTS * avail / natural).max(PIN_MIN_POINTS);
        pin_face = Face::new(&fonts.bold, points, resolution);
    }
    let body_face = Face::new(&fonts.regular, BODY_POINTS, resolution);

    // (face, text, baseline) for every page line.
    let mut placed: Vec<(bool, String, f32)> = Vec::new();
    let mut top = MARGIN_TOP_MM / 25.4 * y_dpi;
    for piece in wrap(&pin_face, &pin_text, avail) {
        placed.push((true, piece, top + pin_face.ascent()));
        top += pin_face.line_height();
    }
    top += body_face.line_height() * 0.5;
    for line in rest {
        if line.is_empty() {
            top += body_face.line_height();
            continue;
        }
        for piece in wrap(&body_face, line, avail) {
            placed.push((false, piece, top + body_face.ascent()));
            top += body_face.line_height();
        }
    }
    if top > bottom {
        // Rows the text needs, bottom margin included.
        let needed = (top + (height as f32 - bottom)).ceil() as u32;
        return Err(RenderError::TooLong {
            needed,
            available: height,
        });
    }

    let mut bmp = Bitmap::new(PAGE_WIDTH, height);
    for (is_pin, text, baseline) in &placed {
        let face = if *is_pin { &pin_face } else { &body_face };
        face.draw(&mut bmp, margin_x, baseline.round(), text);
    }
    Ok(bmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_grouped_in_fours() {
        assert_eq!(
            group_digits("Your PIN 7305917735186203"),
            "Your PIN 7305 9177 3518 6203"
        );
        assert_eq!(group_digits("PIN: 12345678."), "PIN: 1234 5678.");
        assert_eq!(group_digits("1234567"), "1234567");
        assert_eq!(group_digits("123456789"), "1234 5678 9");
        assert_eq!(group_digits("JPY 5,000"), "JPY 5,000");
    }

    #[test]
    fn lines_cleaned() {
        assert_eq!(
            page_lines("\n\n PIN 1\r\n\tAmount\x07 5\n\n\n"),
            vec![" PIN 1", "    Amount 5"]
        );
        assert!(page_lines("\n \n").is_empty());
    }

    #[test]
    fn page_geometry() {
        for (res, rows) in [(Resolution::Fine, 2286), (Resolution::Standard, 1143)] {
            let bmp = render_page("PIN 7305917735186203\nAmount JPY 5,000", res).unwrap();
            assert_eq!(bmp.width(), 1728);
            assert_eq!(bmp.height(), rows);
            assert!(bmp.black_pixels() > 1000);
        }
    }

    #[test]
    fn pin_line_is_large() {
        let bmp = render_page("8888", Resolution::Fine).unwrap();
        let rows: Vec<u32> = (0..bmp.height())
            .filter(|&y| bmp.row(y).iter().any(|&b| b != 0))
            .collect();
        let tall = rows.last().unwrap() - rows.first().unwrap() + 1;
        // A digit's height is about 0.73 em: 28 pt at 196 lpi is about 76 rows per em.
        assert!(tall >= 50, "PIN digits only {tall} rows tall");
        const { assert!(12.0 <= PIN_MIN_POINTS && 12.0 <= BODY_POINTS) };
    }

    #[test]
    fn empty_and_too_long() {
        assert_eq!(
            render_page(" \n\n", Resolution::Fine),
            Err(RenderError::Empty)
        );
        let long = "line\n".repeat(200);
        assert!(matches!(
            render_page(&format!("PIN 1\n{long}"), Resolution::Standard),
            Err(RenderError::TooLong { .. })
        ));
    }

    #[test]
    fn long_lines_wrap_inside_the_margins() {
        let words = "payee ".repeat(60);
        let bmp = render_page(&format!("PIN 12345678\n{words}"), Resolution::Fine).unwrap();
        let margin = (MARGIN_X_MM / 25.4 * X_DPI) as u32;
        for y in 0..bmp.height() {
            for x in (PAGE_WIDTH - margin + 2)..PAGE_WIDTH {
                assert!(!bmp.get(x, y), "ink in the right margin at {x},{y}");
            }
        }
    }
}
