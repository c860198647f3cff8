//! Class 2.0 fax modem responses: the input is what the modem answers during one call, one
//! segment per command (or after the page data). The call must end, with a report or a
//! classified failure, and never panic; the session parameters it reports print back to
//! themselves. Then `+FCS` parameter parsing of the raw input.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pinpost_channel_core::SecretString;
use pinpost_fax::class2::{Notice, send_page};
use pinpost_fax::{CallSettings, Resolution, SessionParams};
use pinpost_fuzz::{PIN, with_scripted_peer};
use pinpost_modem::Modem;
use pinpost_modem::dle::DLE;

fn notice() -> &'static Notice {
    static NOTICE: OnceLock<Notice> = OnceLock::new();
    NOTICE.get_or_init(|| {
        let text = format!("{PIN}\n3000 JPY at shop-1");
        Notice::new(SecretString::from(text), Resolution::Standard).expect("render")
    })
}

fuzz_target!(|data: &[u8]| {
    let settings = CallSettings::default();
    let result = with_scripted_peer(
        data,
        |sent| sent.ends_with(b"\r") || sent.ends_with(&[DLE, b'.']),
        |stream| async move {
            let mut modem = Modem::new(stream);
            send_page(&mut modem, "5551000", notice(), &settings).await
        },
    );
    match result {
        Ok(report) => {
            assert_eq!(
                SessionParams::parse(&report.session.to_string()),
                Some(report.session)
            );
        }
        Err(failure) => {
            // The modem never sees the text, only the page image: nothing to check for the
            // PIN here, but every failure classifies and prints.
            let _ = (
                failure.is_redialable(),
                failure.stage(),
                failure.modem_suspect(),
            );
            let _ = failure.to_string();
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(params) = SessionParams::parse(text) {
            assert_eq!(SessionParams::parse(&params.to_string()), Some(params));
        }
    }
});
