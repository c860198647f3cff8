//! The transport of one connect: plain TCP, or TLS through rustls with the ring provider,
//! with the configured trust anchors and client certificate read from their files.

use std::path::Path;
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Endpoint, PushConfig};

/// The transport for the next connect. Called before every connect, so certificate files
/// replaced on disk are used by the next reconnect. The error names the file, never its content.
pub(crate) fn transport(cfg: &PushConfig) -> Result<Transport, String> {
    let endpoint = Endpoint::parse(&cfg.broker_url)?;
    if !endpoint.tls {
        return Ok(Transport::Tcp);
    }
    Ok(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
        client_config(cfg)?,
    ))))
}

/// A rustls client config on the ring provider: the CA file (or the webpki roots), and the
/// client certificate when one is configured.
pub(crate) fn client_config(cfg: &PushConfig) -> Result<ClientConfig, String> {
    let roots = match &cfg.tls_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "tls_ca_file")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
            }
            roots
        }
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(roots);
    match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs(cert_path, "client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                format!(
                    "client_key_file {}: no usable private key ({})",
                    key_path.display(),
                    pem_error(&e)
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{field} {}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{field} {}: no certificate", path.display()));
    }
    Ok(certs)
}

/// Describes a PEM error without echoing file content.
fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item found".into(),
        _ => "malformed PEM".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpost_channel_core::ChannelId;
    use std::path::PathBuf;

    fn tls_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
    }

    fn cfg() -> PushConfig {
        PushConfig::new(ChannelId::new("carnav"), "mqtts://127.0.0.1:8883", "gw")
    }

    #[test]
    fn builds_with_ca_and_client_certificate() {
        let mut c = cfg();
        c.tls_ca_file = Some(tls_dir().join("ca.pem"));
        c.client_cert_file = Some(tls_dir().join("client.pem"));
        c.client_key_file = Some(tls_dir().join("client.key"));
        let config = client_config(&c).expect("config");
        assert!(config.client_auth_cert_resolver.has_certs());
        assert!(matches!(transport(&c), Ok(Transport::Tls(_))));
    }

    #[test]
    fn webpki_roots_without_a_ca_file() {
        let config = client_config(&cfg()).expect("config");
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn plaintext_is_tcp() {
        let mut c = cfg();
        c.broker_url = "mqtt://127.0.0.1:1883".into();
        c.allow_plaintext = true;
        assert!(matches!(transport(&c), Ok(Transport::Tcp)));
    }

    #[test]
    fn missing_or_wrong_files_name_the_field() {
        let mut c = cfg();
        c.tls_ca_file = Some(tls_dir().join("nope.pem"));
        let e = client_config(&c).unwrap_err();
        assert!(e.starts_with("tls_ca_file"), "{e}");

        let mut c = cfg();
        c.tls_ca_file = Some(tls_dir().join("ca.pem"));
        c.client_cert_file = Some(tls_dir().join("client.pem"));
        c.client_key_file = Some(tls_dir().join("client.pem"));
        let e = client_config(&c).unwrap_err();
        assert!(e.starts_with("client_key_file"), "{e}");

        // A key that does not belong to the certificate.
        c.client_key_file = Some(tls_dir().join("rogue-client.key"));
        let e = client_config(&c).unwrap_err();
        assert!(e.starts_with("client certificate"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }
}
