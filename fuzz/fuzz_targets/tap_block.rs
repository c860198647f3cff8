//! TAP blocks as the paging-terminal simulator reads them. The input, after a mode byte, is
//! either a client's whole side of the line (the simulator must not panic or hang), or a
//! page whose blocks (`pinpost_pager::tap::blocks`) must come out of the simulator as the
//! same pager ID and message, checksums verified, with no protocol violation.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pinpost_fuzz::block_on;
use pinpost_pager::sim::{ReceivedPage, Terminal, TerminalConfig};
use pinpost_pager::tap::{self, CR, EOT, ESC, MAX_BLOCK_CHARS, MIN_BLOCK_CHARS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Feeds `input` to a fresh terminal as the client's side of the line, then ends the line.
fn serve(cfg: TerminalConfig, input: &[u8]) -> Terminal {
    let terminal = Terminal::new(cfg);
    block_on(async {
        let (mut client, line) = tokio::io::duplex(1 << 16);
        let serving = terminal.serve(line);
        let feeding = async move {
            client.write_all(input).await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut answers = Vec::new();
            let _ = client.read_to_end(&mut answers).await;
        };
        let (served, ()) = tokio::join!(serving, feeding);
        let _ = served;
    });
    terminal
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        serve(TerminalConfig::default(), rest);
        return;
    }
    // A page: block size, then pager ID and message split at the first CR, each reduced to
    // printable 7-bit ASCII as the driver's text clean-up leaves it.
    let block_chars =
        MIN_BLOCK_CHARS + usize::from(mode >> 1) % (MAX_BLOCK_CHARS - MIN_BLOCK_CHARS + 1);
    let (id, message) = match rest.iter().position(|&b| b == CR) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let printable =
        |bytes: &[u8]| -> String { bytes.iter().map(|&b| char::from(b'!' + b % 94)).collect() };
    let id: String = printable(id).chars().take(MIN_BLOCK_CHARS - 2).collect();
    let message: String = printable(message).chars().take(240).collect();
    if id.is_empty() {
        return;
    }
    let blocks = tap::blocks(&id, &message, block_chars);
    let mut input = vec![CR, ESC, b'P', b'G', b'1', CR];
    for block in &blocks {
        input.extend_from_slice(block);
    }
    input.extend_from_slice(&[EOT, CR]);
    let terminal = serve(TerminalConfig::default(), &input);
    assert_eq!(
        terminal.pages(),
        vec![ReceivedPage {
            pager_id: id,
            message,
            blocks: blocks.len(),
        }]
    );
    let stats = terminal.stats();
    assert_eq!(stats.violations, Vec::<String>::new());
    assert_eq!((stats.checksum_errors, stats.logouts), (0, 1));
});
