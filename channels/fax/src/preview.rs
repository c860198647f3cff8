//! Page previews: the page as a TIFF Class F file (our own MH strip) or as a PNG.

use std::io::Cursor;
use std::path::Path;

use tiff::encoder::{Rational, TiffEncoder};
use tiff::tags::Tag;

use crate::mh::{self, MhOptions};
use crate::page::{Bitmap, RenderError, Resolution, X_DPI, render_page};

/// The file format of a preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewFormat {
    /// PNG, 1 bit per pixel. A standard-resolution page has every row twice, so the
    /// picture has the page's proportions.
    Png,
    /// TIFF Class F: one strip of T.4 MH data exactly as the modem gets it (minus RTC),
    /// `Compression=3`, `FillOrder=2`, `T4Options=4`, 204 × 196 or 204 × 98 dpi.
    Tiff,
}

impl PreviewFormat {
    /// The format named by a file's extension (`.png`, `.tif`, `.tiff`; any case).
    pub fn from_path(path: &Path) -> Option<PreviewFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(PreviewFormat::Png),
            "tif" | "tiff" => Some(PreviewFormat::Tiff),
            _ => None,
        }
    }
}

/// Render `text` as the channel would fax it and return the file's bytes.
///
/// The preview shows whatever `text` holds; callers offering it to people should pass a
/// sample PIN, not a real one.
pub fn render_preview(
    text: &str,
    resolution: Resolution,
    format: PreviewFormat,
) -> Result<Vec<u8>, RenderError> {
    let page = render_page(text, resolution)?;
    match format {
        PreviewFormat::Png => png_bytes(&page, resolution),
        PreviewFormat::Tiff => tiff_class_f(&page, resolution),
    }
}

fn encode_error(e: impl std::fmt::Display) -> RenderError {
    RenderError::Encode(e.to_string())
}

/// A single-page TIFF Class F file around our own MH strip.
pub fn tiff_class_f(page: &Bitmap, resolution: Resolution) -> Result<Vec<u8>, RenderError> {
    let strip = mh::encode(page, &MhOptions::TIFF);
    let mut file = Cursor::new(Vec::with_capacity(strip.len() + 512));
    {
        let mut tiff = TiffEncoder::new(&mut file).map_err(encode_error)?;
        let mut dir = tiff.image_directory().map_err(encode_error)?;
        let offset = dir.write_data(strip.as_slice()).map_err(encode_error)?;
        let offset = u32::try_from(offset).map_err(encode_error)?;
        let rows = page.height();
        let longs: [(Tag, u32); 9] = [
            (Tag::NewSubfileType, 2), // one page of a multi-page document
            (Tag::ImageWidth, page.width()),
            (Tag::ImageLength, rows),
            (Tag::StripOffsets, offset),
            (Tag::RowsPerStrip, rows),
            (Tag::StripByteCounts, strip.len() as u32),
            (Tag::Unknown(292), 4), // T4Options: 1-D, fill bits before EOL
            (Tag::Unknown(326), 0), // BadFaxLines
            (Tag::Unknown(328), 0), // ConsecutiveBadFaxLines
        ];
        for (tag, value) in longs {
            dir.write_tag(tag, value).map_err(encode_error)?;
        }
        let shorts: [(Tag, u16); 8] = [
            (Tag::BitsPerSample, 1),
            (Tag::Compression, 3),               // CCITT T.4
            (Tag::PhotometricInterpretation, 0), // WhiteIsZero
            (Tag::FillOrder, 2),                 // LSB first, as the modem takes it
            (Tag::Orientation, 1),
            (Tag::SamplesPerPixel, 1),
            (Tag::ResolutionUnit, 2), // inch
            (Tag::Unknown(327), 0),   // CleanFaxData: clean
        ];
        for (tag, value) in shorts {
            dir.write_tag(tag, value).map_err(encode_error)?;
        }
        dir.write_tag(Tag::Unknown(297), &[0u16, 1][..]) // PageNumber 0 of 1
            .map_err(encode_error)?;
        dir.write_tag(
            Tag::XResolution,
            Rational {
                n: X_DPI as u32,
                d: 1,
            },
        )
        .map_err(encode_error)?;
        dir.write_tag(
            Tag::YResolution,
            Rational {
                n: resolution.lines_per_inch(),
                d: 1,
            },
        )
        .map_err(encode_error)?;
        dir.write_tag(Tag::Software, "pinpost")
            .map_err(encode_error)?;
        dir.finish().map_err(encode_error)?;
    }
    Ok(file.into_inner())
}

/// A 1-bit grayscale PNG of the page (standard resolution: rows doubled).
pub fn png_bytes(page: &Bitmap, resolution: Resolution) -> Result<Vec<u8>, RenderError> {
    let doubled;
    let (img, y_dpi) = match resolution {
        Resolution::Fine => (page, 196.0),
        Resolution::Standard => {
            doubled = page.doubled_rows();
            (&doubled, 196.0)
        }
    };
    let per_metre = |dpi: f32| (dpi / 0.0254).round() as u32;
    let mut out = Vec::with_capacity(img.stride() * img.height() as usize / 8 + 1024);
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        enc.set_pixel_dims(Some(png::PixelDimensions {
            xppu: per_metre(X_DPI),
            yppu: per_metre(y_dpi),
            unit: png::Unit::Meter,
        }));
        let mut writer = enc.write_header().map_err(encode_error)?;
        // PNG grayscale: 0 is black. Bits past the width stay as they are (ignored).
        let mut data = Vec::with_capacity(img.stride() * img.height() as usize);
        for y in 0..img.height() {
            data.extend(img.row(y).iter().map(|b| !b));
        }
        writer.write_image_data(&data).map_err(encode_error)?;
        writer.finish().map_err(encode_error)?;
    }
    Ok(out)
}
