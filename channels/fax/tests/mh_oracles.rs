//! The MH encoder against decoders written elsewhere: hayro-ccitt row for row, libtiff's
//! fax2tiff and tiffinfo for row count and width, tesseract for the text.

mod support;

use pinpost_channel_core::testkit::CANARY_PIN;
use pinpost_fax::mh::{self, BitOrder, MhOptions};
use pinpost_fax::page::{Bitmap, Resolution, render_page};
use pinpost_fax::preview::{PreviewFormat, render_preview};
use support::*;

const NOTICE: &str = "PIN 7305917735186203\n\
Amount: JPY 12,800\n\
Payee: Example Books Ltd.\n\
Expires: 2026-12-31 23:59 JST\n\
Issuer: Trusted Third Party Co.";

/// Every white and black run length up to the page width, at every start parity, plus
/// pseudo-random rows.
fn run_length_bitmap(width: u32) -> Bitmap {
    let mut rows: Vec<Vec<(u32, u32)>> = Vec::new();
    for r in 0..=width {
        rows.push(vec![(r, width)]); // white r, then black to the end
        rows.push(vec![(0, r)]); // black r, then white
        if r + 1 < width {
            rows.push(vec![(1, 1 + r)]); // a black run of r after one white pel
        }
    }
    let mut seed = 0x2545_f491_u32;
    for _ in 0..200 {
        let mut spans = Vec::new();
        let mut x = 0;
        while x < width {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = 1 + seed % 97;
            if seed & 0x100 != 0 {
                spans.push((x, (x + len).min(width)));
            }
            x += len;
        }
        rows.push(spans);
    }
    let mut bmp = Bitmap::new(width, rows.len() as u32);
    for (y, spans) in rows.iter().enumerate() {
        for &(a, b) in spans {
            for x in a..b {
                bmp.set(x as i32, y as i32);
            }
        }
    }
    bmp
}

#[test]
fn every_run_length_matches_hayro_ccitt() {
    // 1728 (A4), and a wide page for the extended and repeated 2560 make-up codes.
    for width in [1728, 5200] {
        let bmp = run_length_bitmap(width);
        for opts in [
            MhOptions::MODEM,
            MhOptions::PHASE_C,
            MhOptions {
                bit_order: BitOrder::MsbFirst,
                align_eol: false,
                rtc: true,
            },
            MhOptions {
                bit_order: BitOrder::MsbFirst,
                align_eol: true,
                rtc: false,
            },
        ] {
            let data = mh::encode(&bmp, &opts);
            let lsb = opts.bit_order == BitOrder::LsbFirst;
            let got = hayro_decode(&data, width, bmp.height(), lsb);
            assert_same_rows(&got, &bmp);
        }
    }
}

#[test]
fn rendered_pages_match_hayro_ccitt() {
    for res in [Resolution::Fine, Resolution::Standard] {
        let page = render_page(NOTICE, res).unwrap();
        let data = mh::encode_for_modem(&page);
        let got = hayro_decode(&data, 1728, page.height(), true);
        assert_same_rows(&got, &page);
    }
}

#[test]
fn fax2tiff_reads_our_pages() {
    for res in [Resolution::Fine, Resolution::Standard] {
        let dir = tempfile::tempdir().unwrap();
        let page = render_page(NOTICE, res).unwrap();
        let tif = fax2tiff(dir.path(), &mh::encode_for_modem(&page), res, false);
        let (width, rows, info) = tiffinfo_size(&tif);
        assert_eq!(width, 1728, "{info}");
        assert_eq!(rows, res.a4_rows(), "{info}");

        // With RTC: fax2tiff does not stop at RTC, it reads its last five EOLs as empty
        // rows (warning "Premature EOL"), so it reports five rows more.
        let tif = fax2tiff(
            dir.path(),
            &mh::encode(&page, &MhOptions::PHASE_C),
            res,
            false,
        );
        let (width, rows, info) = tiffinfo_size(&tif);
        assert_eq!((width, rows), (1728, res.a4_rows() + 5), "{info}");
    }
}

#[test]
fn tesseract_reads_the_pin_from_fax2tiff_output() {
    for res in [Resolution::Fine, Resolution::Standard] {
        let dir = tempfile::tempdir().unwrap();
        let page = render_page(&format!("Your PIN {CANARY_PIN}\nAmount: JPY 12,800"), res).unwrap();
        // Standard pages are stretched to fine (-s) so the letters have their shape.
        let tif = fax2tiff(
            dir.path(),
            &mh::encode_for_modem(&page),
            res,
            res == Resolution::Standard,
        );
        let text = ocr(&tif);
        assert!(
            digits(&text).contains(CANARY_PIN),
            "OCR at {res:?} did not read the PIN; it read:\n{text}"
        );
        assert!(
            text.contains("7305 9177 3518 6203"),
            "PIN not grouped in fours:\n{text}"
        );
    }
}

#[test]
fn tiff_preview_is_class_f() {
    for res in [Resolution::Fine, Resolution::Standard] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = render_preview(NOTICE, res, PreviewFormat::Tiff).unwrap();
        let tif = dir.path().join("preview.tif");
        std::fs::write(&tif, &bytes).unwrap();
        let (width, rows, info) = tiffinfo_size(&tif);
        assert_eq!((width, rows), (1728, res.a4_rows()), "{info}");
        assert!(info.contains("CCITT Group 3"), "{info}");
        assert!(info.contains("FillOrder: lsb-to-msb"), "{info}");
        assert!(info.contains("Bits/Sample: 1"), "{info}");
        let dpi = format!("Resolution: 204, {}", res.lines_per_inch());
        assert!(info.contains(&dpi), "{info}");
        // libtiff decodes the strip completely (tiffinfo -D reads the image data).
        let tool = require_tool("tiffinfo", "libtiff-tools");
        let (_, err) = run(
            std::process::Command::new(tool).arg("-D").arg(&tif),
            std::time::Duration::from_secs(30),
        );
        assert!(
            !err.to_lowercase().contains("bad"),
            "libtiff complained: {err}"
        );
    }
}

#[test]
fn tesseract_reads_the_png_preview() {
    for res in [Resolution::Fine, Resolution::Standard] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = render_preview(
            &format!("PIN {CANARY_PIN}\nPayee: Example"),
            res,
            PreviewFormat::Png,
        )
        .unwrap();
        let png = dir.path().join("preview.png");
        std::fs::write(&png, &bytes).unwrap();
        let text = ocr(&png);
        assert!(
            digits(&text).contains(CANARY_PIN),
            "OCR at {res:?} read:\n{text}"
        );
    }
}
