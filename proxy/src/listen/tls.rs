//! TLS for listeners: rustls with TLS 1.2 and 1.3 only, ALPN h2 and http/1.1.
use crate::config::TlsConfig;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// Why a listener's certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {}: {error}", path.display())]
    Cert {
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error("tls.cert {}: no PEM certificate found", .0.display())]
    NoCert(PathBuf),
    #[error("tls.key {}: {error}", path.display())]
    Key {
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    /// The certificate and key do not make a pair rustls takes.
    #[error("tls.cert/tls.key {}: {error}", cert.display())]
    Pair { cert: PathBuf, error: rustls::Error },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Cert {
            path: cfg.cert.clone(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cfg.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|error| TlsError::Key {
        path: cfg.key.clone(),
        error,
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|error| TlsError::Pair {
                cert: cfg.cert.clone(),
                error,
            })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
