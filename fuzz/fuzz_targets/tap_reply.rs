//! TAP terminal answers: the input (after a first byte that picks the block size) is what
//! the paging terminal sends, one segment per request (probe, login, block, logout).
//! Whatever it sends, the client must not panic or hang, and no error the page ends with may
//! carry the PIN.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinpost_channel_core::{ChannelId, SecretString};
use pinpost_fuzz::{PIN, with_scripted_peer};
use pinpost_pager::TapConfig;
use pinpost_pager::fuzzing::{PageError, tap_page};
use pinpost_pager::tap::{CR, MIN_BLOCK_CHARS};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, script)) = data.split_first() else {
        return;
    };
    let mut cfg = TapConfig::new(ChannelId::new("fuzz"), "/dev/null");
    cfg.block_chars = MIN_BLOCK_CHARS + usize::from(flags % 16);
    cfg.password = (flags & 0x80 != 0).then(|| SecretString::from("AB1234"));
    let text = format!("PIN {PIN} for 3000 JPY at shop-1");
    let result = with_scripted_peer(
        script,
        |sent| sent.last() == Some(&CR),
        |stream| tap_page(cfg, stream, "5551000", &text),
    );
    // Opening the session happens before the page is known: only the page's errors can
    // (and must) keep the PIN out.
    if let Err(PageError::Send(e)) = result {
        assert!(!e.contains(PIN), "the PIN in an error: {e}");
    }
});
