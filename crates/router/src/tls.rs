//! TLS at the router (rustls): one or more certificate / key pairs, the first the default and
//! the others chosen by SNI against their own subject names; HTTP/2 and HTTP/1.1 by ALPN (so
//! gRPC works over TLS). The files are read again when they change (checked every second), so
//! a renewed certificate reaches new connections without a restart, while open connections
//! keep the one they began with. A pair that does not load keeps the last good one (logged).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate chain file and its private key file (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("--tls-key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS: {0}")]
    Config(String),
}

/// The router's TLS: what accepts connections, and the certificates it serves.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
}

struct Loaded {
    keys: Vec<Arc<CertifiedKey>>,
    /// The files' modification times and sizes when read.
    stamps: Vec<Option<(SystemTime, u64)>>,
    /// SNI name → index in `keys` (found once per name).
    by_name: Mutex<std::collections::HashMap<String, usize>>,
}

struct Resolver {
    pairs: Vec<CertPair>,
    current: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("pairs", &self.pairs)
            .finish()
    }
}

impl Tls {
    /// TLS for `pairs` when any is given, else `None` (plain HTTP).
    pub fn for_pairs(pairs: Vec<CertPair>) -> Result<Option<Tls>, TlsError> {
        if pairs.is_empty() {
            return Ok(None);
        }
        Tls::load(pairs).map(Some)
    }

    /// Load `pairs` (the first is the default) and watch their files for changes.
    pub fn load(pairs: Vec<CertPair>) -> Result<Tls, TlsError> {
        if pairs.is_empty() {
            return Err(TlsError::Config("no certificate given".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load_all(&pairs, &provider)?;
        let resolver = Arc::new(Resolver {
            pairs,
            current: RwLock::new(Arc::new(loaded)),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let weak = Arc::downgrade(&resolver);
        std::thread::Builder::new()
            .name("ferry-router-tls".into())
            .spawn(move || {
                while let Some(resolver) = weak.upgrade() {
                    resolver.reload_if_changed(&provider);
                    drop(resolver);
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .map_err(|e| TlsError::Config(format!("cannot start the certificate watcher: {e}")))?;
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Resolver {
    fn reload_if_changed(&self, provider: &rustls::crypto::CryptoProvider) {
        let stamps: Vec<_> = self.pairs.iter().flat_map(stamps).collect();
        if self.current.read().expect("tls poisoned").stamps == stamps {
            return;
        }
        match load_all(&self.pairs, provider) {
            Ok(loaded) => {
                tracing::info!(
                    pairs = self.pairs.len(),
                    "TLS certificates changed on disk: serving the new ones to new connections"
                );
                *self.current.write().expect("tls poisoned") = Arc::new(loaded);
            }
            Err(error) => {
                // Half-written files look like this too: keep serving the last good pair and
                // try again at the next change.
                tracing::warn!(error = %error, "TLS certificates changed but do not load; still serving the previous ones");
                let mut current = self.current.write().expect("tls poisoned");
                let kept = Loaded {
                    keys: current.keys.clone(),
                    stamps,
                    by_name: Mutex::default(),
                };
                *current = Arc::new(kept);
            }
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.current.read().expect("tls poisoned").clone();
        let index = match hello.server_name() {
            Some(name) if loaded.keys.len() > 1 => {
                let mut by_name = loaded.by_name.lock().expect("tls poisoned");
                *by_name
                    .entry(name.to_string())
                    .or_insert_with(|| matching(&loaded.keys, name).unwrap_or(0))
            }
            _ => 0,
        };
        loaded.keys.get(index).cloned()
    }
}

/// The first pair after the default whose certificate names `name`.
fn matching(keys: &[Arc<CertifiedKey>], name: &str) -> Option<usize> {
    let server_name = ServerName::try_from(name).ok()?;
    keys.iter().enumerate().skip(1).find_map(|(index, key)| {
        let leaf = key.cert.first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        cert.verify_is_valid_for_subject_name(&server_name)
            .ok()
            .map(|()| index)
    })
}

fn stamps(pair: &CertPair) -> [Option<(SystemTime, u64)>; 2] {
    let stamp = |path: &PathBuf| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [stamp(&pair.cert), stamp(&pair.key)]
}

fn load_all(
    pairs: &[CertPair],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Loaded, TlsError> {
    let stamps = pairs.iter().flat_map(stamps).collect();
    let keys = pairs
        .iter()
        .map(|pair| load(pair, provider).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(Loaded {
        keys,
        stamps,
        by_name: Mutex::default(),
    })
}

fn load(
    pair: &CertPair,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        path: pair.cert.display().to_string(),
        message,
    };
    let key_error = |message: String| TlsError::Key {
        path: pair.key.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        key_error(format!(
            "does not match the certificate, or unsupported: {e}"
        ))
    })?;
    Ok(certified)
}
