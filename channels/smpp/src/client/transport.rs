//! Opening the byte stream a bind runs over: TCP or TLS from the configured URL, or any
//! `AsyncRead + AsyncWrite` a caller hands in (tests use `tokio::io::duplex`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Any duplex byte stream.
pub(crate) trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncIo for T {}

pub(crate) type BoxIo = Box<dyn AsyncIo>;

/// Opens a fresh stream for each (re)connect.
pub(crate) type Connector = Arc<dyn Fn() -> BoxFuture<'static, io::Result<BoxIo>> + Send + Sync>;

/// Where `smpp://` / `smpps://` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| "expected smpp://host:port or smpps://host:port".to_owned())?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "smpp" => false,
            "smpps" | "ssmpp" => true,
            other => return Err(format!("unsupported scheme {other:?}")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("credentials do not belong in the url".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| "unterminated IPv6 address".to_owned())?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err("garbage after the IPv6 address".into()),
            };
            (host.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        let port = match port {
            None => 2775,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port {p:?}"))?,
        };
        Ok(Endpoint { host, port, tls })
    }
}

/// A connector for a URL: TCP, plus TLS (rustls with the ring provider, webpki roots and the
/// optional extra CA file) for `smpps://`.
pub(crate) fn url_connector(
    url: &str,
    ca_file: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<Connector, String> {
    let endpoint = Endpoint::parse(url)?;
    let tls = if endpoint.tls {
        let config = tls_config(ca_file)?;
        let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|e| format!("host is not a valid TLS server name: {e}"))?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    let endpoint = Arc::new(endpoint);
    Ok(Arc::new(move || {
        let endpoint = endpoint.clone();
        let tls = tls.clone();
        Box::pin(async move {
            let open = async {
                let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
                tcp.set_nodelay(true)?;
                match tls {
                    None => Ok(Box::new(tcp) as BoxIo),
                    Some((connector, name)) => {
                        let stream = connector.connect(name, tcp).await?;
                        Ok(Box::new(stream) as BoxIo)
                    }
                }
            };
            tokio::time::timeout(timeout, open)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        }) as BoxFuture<'static, io::Result<BoxIo>>
    }))
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "tls_ca_file {}: no certificate found",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            Endpoint::parse("smpp://127.0.0.1:2776").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 2776,
                tls: false
            }
        );
        assert_eq!(
            Endpoint::parse("smpps://smsc.example.net").unwrap(),
            Endpoint {
                host: "smsc.example.net".into(),
                port: 2775,
                tls: true
            }
        );
        assert_eq!(
            Endpoint::parse("SMPP://[::1]:3000/").unwrap(),
            Endpoint {
                host: "::1".into(),
                port: 3000,
                tls: false
            }
        );
        assert!(Endpoint::parse("http://x:1").is_err());
        assert!(Endpoint::parse("smpp://:1").is_err());
        assert!(Endpoint::parse("smpp://host:0").is_err());
        assert!(Endpoint::parse("smpp://host:99999").is_err());
        assert!(Endpoint::parse("smpp://user:pw@host:1").is_err());
        assert!(Endpoint::parse("host:2775").is_err());
    }

    #[test]
    fn a_missing_ca_file_is_reported() {
        let e = match url_connector(
            "smpps://localhost:1",
            Some(Path::new("/nonexistent/ca.pem")),
            std::time::Duration::from_secs(1),
        ) {
            Err(e) => e,
            Ok(_) => panic!("a missing CA file must be an error"),
        };
        assert!(e.contains("tls_ca_file"), "{e}");
    }
}

/// A stream whose reader can be woken from outside. The connection task of rusmppc 0.4.0
/// stops after five queued requests or actions per wake-up without arranging to be woken
/// again; only its socket read registers a waker. [`WakeHandle::wake`] wakes that reader, so
/// the task runs again and drains its queues (see `session::Kicker`).
pub(crate) struct Wakeable<S> {
    inner: S,
    waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
}

/// Wakes the task reading a [`Wakeable`] stream.
#[derive(Clone)]
pub(crate) struct WakeHandle(Arc<std::sync::Mutex<Option<std::task::Waker>>>);

impl WakeHandle {
    pub(crate) fn wake(&self) {
        if let Some(w) = self.0.lock().expect("waker lock").as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<S> Wakeable<S> {
    pub(crate) fn new(inner: S) -> (Wakeable<S>, WakeHandle) {
        let waker = Arc::new(std::sync::Mutex::new(None));
        (
            Wakeable {
                inner,
                waker: waker.clone(),
            },
            WakeHandle(waker),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wakeable<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        {
            let mut slot = self.waker.lock().expect("waker lock");
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wakeable<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
