//! Helpers shared by the fuzz targets: a runtime on a paused clock and a scripted peer that
//! answers a client with the fuzz input, one segment per request.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Separates the answers in a script: the peer sends the first answer when the client
/// connects and each following one when the client has finished a request.
pub const SEPARATOR: u8 = 0xff;

/// The PIN in the texts the clients send; it must never show in an error they report.
pub const PIN: &str = "4921773055614410";

/// Runs `fut` on a current-thread runtime whose clock is paused: whenever every task waits,
/// time jumps to the next timer, so timeouts cost nothing and runs are reproducible.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
        .block_on(fut)
}

/// A client connected to a scripted peer, and the peer: `client` gets one end of a
/// [`tokio::io::duplex`] pipe; the other end sends the first segment of `script` at once
/// and the next one each time what the client wrote since the last one ends a request
/// (`request_done`). After the last segment the peer ends its side of the stream and keeps
/// reading until the client closes.
pub fn with_scripted_peer<C, Fut, T>(script: &[u8], request_done: fn(&[u8]) -> bool, client: C) -> T
where
    C: FnOnce(DuplexStream) -> Fut,
    Fut: Future<Output = T>,
{
    block_on(async {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (result, ()) = tokio::join!(client(ours), peer(theirs, script, request_done));
        result
    })
}

async fn peer(mut io: DuplexStream, script: &[u8], request_done: fn(&[u8]) -> bool) {
    let mut segments = script.split(|&b| b == SEPARATOR);
    let mut open = true;
    if let Some(first) = segments.next() {
        if io.write_all(first).await.is_err() {
            return;
        }
    }
    let mut heard = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !open {
            continue;
        }
        heard.extend_from_slice(&buf[..n]);
        if !request_done(&heard) {
            continue;
        }
        heard.clear();
        match segments.next() {
            Some(segment) => {
                if io.write_all(segment).await.is_err() {
                    return;
                }
            }
            None => {
                let _ = io.shutdown().await;
                open = false;
            }
        }
    }
}
