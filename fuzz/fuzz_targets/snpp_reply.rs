//! SNPP replies: the input (after a first byte that picks MESS or DATA and a login) is what
//! the gateway answers, one segment per command. Whatever it says, the client must not
//! panic or hang, and no error the page ends with may carry the PIN.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinpost_channel_core::{ChannelId, SecretString};
use pinpost_fuzz::{PIN, with_scripted_peer};
use pinpost_pager::fuzzing::{PageError, snpp_page};
use pinpost_pager::{SnppConfig, SnppLogin, SnppMessageCommand};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, script)) = data.split_first() else {
        return;
    };
    let mut cfg = SnppConfig::new(ChannelId::new("fuzz"), "snpp://127.0.0.1:444");
    cfg.message_command = if flags & 1 != 0 {
        SnppMessageCommand::Data
    } else {
        SnppMessageCommand::Mess
    };
    if flags & 2 != 0 {
        cfg.login = Some(SnppLogin {
            user: "pinpost".into(),
            password: Some(SecretString::from("secret")),
        });
    }
    let text = format!("PIN {PIN} for 3000 JPY\n.at shop-1");
    let result = with_scripted_peer(
        script,
        |sent| sent.ends_with(b"\n"),
        |stream| snpp_page(cfg, stream, "5551000", &text),
    );
    // Opening the session happens before the page is known: only the page's errors can
    // (and must) keep the PIN out.
    if let Err(PageError::Send(e)) = result {
        assert!(!e.contains(PIN), "the PIN in an error: {e}");
    }
});
