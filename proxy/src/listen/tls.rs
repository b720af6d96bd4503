//! TLS for listeners: rustls with TLS 1.2 and 1.3 only, ALPN h2 and
//! http/1.1; optionally mutual TLS (client certificates checked against a CA
//! bundle, their names read for the tenant). The certificate, key and CA are
//! read again when they change: new connections get the new ones, open
//! connections keep their session.
use crate::config::{ClientAuth, TlsConfig, TlsVersion};
use crate::tenant::ClientIdentity;
use crate::watch::FileStamp;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio_rustls::TlsAcceptor;

/// Why a listener's certificate, key or CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field} {}: {error}", path.display())]
    Pem {
        field: &'static str,
        path: PathBuf,
        error: rustls_pki_types::pem::Error,
    },
    #[error("tls.{field} {}: no PEM certificate found", path.display())]
    NoCert { field: &'static str, path: PathBuf },
    /// The certificate and key do not make a pair rustls takes.
    #[error("tls.cert/tls.key {}: {error}", cert.display())]
    Pair { cert: PathBuf, error: rustls::Error },
    #[error("tls.client_ca {}: {error}", path.display())]
    ClientCa { path: PathBuf, error: String },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// A listener's TLS: the acceptor for new connections, rebuilt when its files change.
pub struct ServerTls {
    config: TlsConfig,
    current: RwLock<TlsAcceptor>,
    /// The files as they were when `current` was built.
    stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl ServerTls {
    pub fn load(config: &TlsConfig) -> Result<Arc<ServerTls>, TlsError> {
        let config = config.clone();
        let stamps = stamps(&config);
        let acceptor = TlsAcceptor::from(server_config(&config)?);
        Ok(Arc::new(ServerTls {
            config,
            current: RwLock::new(acceptor),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap().clone()
    }

    /// Rebuilds the acceptor when a file changed (blocking: reads files).
    /// A change that does not load (a key written before its certificate)
    /// keeps the old one, and is tried again at the next change.
    pub fn reload_if_changed(&self, listener: &str) {
        let now = stamps(&self.config);
        {
            let mut seen = self.stamps.lock().unwrap();
            if *seen == now {
                return;
            }
            *seen = now;
        }
        let outcome = match server_config(&self.config) {
            Ok(c) => {
                *self.current.write().unwrap() = TlsAcceptor::from(c);
                tracing::info!(listener, "TLS certificate, key and CA reloaded");
                "ok"
            }
            Err(error) => {
                tracing::error!(listener, %error, "TLS files changed but do not load; keeping the previous ones");
                "error"
            }
        };
        crate::telemetry::METRICS
            .tls_reloads
            .with_label_values(&[listener, outcome])
            .inc();
    }
}

fn stamps(c: &TlsConfig) -> Vec<Option<FileStamp>> {
    [Some(&c.cert), Some(&c.key), c.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| FileStamp::of(p))
        .collect()
}

fn certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Pem {
            field,
            path: path.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The crypto provider with only the configured suites (all of ring's by default).
fn provider(cfg: &TlsConfig) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if !cfg.cipher_suites.is_empty() {
        // Names are checked by the config's validation.
        p.cipher_suites.retain(|s| {
            s.suite()
                .as_str()
                .is_some_and(|n| cfg.cipher_suites.iter().any(|c| c == n))
        });
    }
    Arc::new(p)
}

pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs("cert", &cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|error| TlsError::Pem {
        field: "key",
        path: cfg.key.clone(),
        error,
    })?;
    let provider = provider(cfg);
    let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in certs("client_ca", path)? {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match cfg.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::ClientCa {
                path: path.clone(),
                error: e.to_string(),
            })?)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Pair {
            cert: cfg.cert.clone(),
            error,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The identity of the client on `conn`, if it presented a certificate
/// (rustls has verified it against the listener's CA by then).
pub fn client_identity(conn: &rustls::ServerConnection) -> Option<Arc<ClientIdentity>> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(Arc::new(identity_of(leaf)))
}

/// A certificate's DNS, URI and e-mail subject alternative names, then its
/// subject's common names.
pub fn identity_of(der: &[u8]) -> ClientIdentity {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return ClientIdentity::default();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    names.push(s.to_string())
                }
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_string());
        }
    }
    ClientIdentity { names }
}
