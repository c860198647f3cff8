//! Write a preview of a PIN notice: `cargo run -p pinpost-fax --example fax_preview -- OUT.png|OUT.tif [standard]`.
//! The text is read from standard input (a sample PIN, never a real one).

use std::io::Read;
use std::path::PathBuf;

use pinpost_fax::page::Resolution;
use pinpost_fax::preview::{PreviewFormat, render_preview};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: fax_preview OUT.png|OUT.tif [standard]")?,
    );
    let resolution = match args.next().as_deref() {
        Some("standard") => Resolution::Standard,
        _ => Resolution::Fine,
    };
    let format =
        PreviewFormat::from_path(&out).ok_or("the output must end in .png, .tif or .tiff")?;
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    std::fs::write(&out, render_preview(&text, resolution, format)?)?;
    Ok(())
}
