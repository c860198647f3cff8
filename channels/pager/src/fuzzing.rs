//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

use std::io;

use pinpost_channel_core::SecretString;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::channel::{Page, Protocol};
use crate::config::{SnppConfig, TapConfig};
use crate::snpp::Snpp;
use crate::tap::Tap;

/// Why a page did not go through, with what the channel would report.
#[derive(Debug)]
pub enum PageError {
    /// The session could not be opened (before the page was known to it).
    Open(String),
    /// The page itself failed.
    Send(String),
}

/// One page through a fresh SNPP session on `stream`: greeting (and login), the page, and
/// `QUIT` when the session is still good.
pub async fn snpp_page<S>(
    cfg: SnppConfig,
    stream: S,
    pager_id: &str,
    text: &str,
) -> Result<(), PageError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = Some(stream);
    let connect = move || {
        let s = stream
            .take()
            .ok_or_else(|| io::Error::other("no second connection"));
        async move { s }
    };
    one_page(Snpp::new(cfg.into(), connect), pager_id, text).await
}

/// One page through a fresh TAP session on `stream`: probe, login, go-ahead, the blocks,
/// and the logout when the session is still good.
pub async fn tap_page<S>(
    cfg: TapConfig,
    stream: S,
    pager_id: &str,
    text: &str,
) -> Result<(), PageError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = Some(stream);
    let connect = move || {
        let s = stream
            .take()
            .ok_or_else(|| io::Error::other("no second line"));
        async move { s }
    };
    one_page(Tap::new(cfg.into(), connect, false), pager_id, text).await
}

async fn one_page<P: Protocol>(mut proto: P, pager_id: &str, text: &str) -> Result<(), PageError> {
    let mut session = proto.open().await.map_err(PageError::Open)?;
    let page = Page {
        delivery_id: "fuzz".into(),
        pager_id: pager_id.into(),
        text: SecretString::from(text),
        expires_at: None,
    };
    let outcome = proto.deliver(&mut session, &page).await;
    if outcome.keep {
        proto.close(session).await;
    } else {
        proto.discard(session);
    }
    outcome.result.map_err(|e| PageError::Send(e.to_string()))
}
