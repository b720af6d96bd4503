//! Tenants and the API keys that identify them. Keys are looked up by their
//! SHA-256 digest and then compared in constant time, so neither the lookup
//! nor the comparison leaks how much of a guessed key was right. Keys are
//! never logged, never exported in metrics; only tenant names are.
//!
//! The tenant a key authenticates to carries its stage chain (its stages'
//! state and its outputs), so a request finds everything about its tenant
//! in one lookup.
use crate::config::Secret;
use crate::pipeline::Chain;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct Tenant {
    pub name: Arc<str>,
    /// Its stages and outputs.
    pub chain: Arc<Chain>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tenant({:?})", self.name)
    }
}

#[derive(Default)]
pub struct Tenants {
    by_digest: HashMap<[u8; 32], (Secret, Arc<Tenant>)>,
    /// For listeners whose senders send no key (a listener names its tenant).
    by_name: HashMap<Arc<str>, Arc<Tenant>>,
    /// Client certificate names (mutual TLS) to their tenant.
    by_client_name: HashMap<String, Arc<Tenant>>,
}

/// The names a verified client certificate carries (its DNS, URI and e-mail
/// subject alternative names, then its subject's common names), which
/// `tenants[].client_names` map to a tenant. Set by the listener after the
/// TLS handshake; the certificate was checked against `tls.client_ca`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub names: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No key in the request: 401.
    Missing,
    /// A key no tenant owns: 403.
    Unknown,
}

impl Tenants {
    /// Adds `tenant`, which `keys` authenticate to (the plan made them unique).
    pub fn add(&mut self, keys: &[Secret], tenant: Arc<Tenant>) {
        self.by_name.insert(tenant.name.clone(), tenant.clone());
        for key in keys {
            self.by_digest
                .insert(digest(key.expose()), (key.clone(), tenant.clone()));
        }
    }

    /// Adds the client certificate names identifying `tenant` (the config made them unique).
    pub fn add_client_names(&mut self, names: &[String], tenant: &Arc<Tenant>) {
        for n in names {
            self.by_client_name.insert(n.clone(), tenant.clone());
        }
    }

    /// The tenant the first mapped name of a client certificate identifies.
    pub fn by_certificate(&self, id: &ClientIdentity) -> Option<Arc<Tenant>> {
        id.names
            .iter()
            .find_map(|n| self.by_client_name.get(n))
            .cloned()
    }

    /// The tenant named `name`, if any.
    pub fn named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.by_name.get(name).cloned()
    }

    /// The tenant owning `key`, if any.
    pub fn authenticate(&self, key: Option<&str>) -> Result<Arc<Tenant>, AuthError> {
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        match self.by_digest.get(&digest(key)) {
            Some((secret, tenant))
                if bool::from(secret.expose().as_bytes().ct_eq(key.as_bytes())) =>
            {
                Ok(tenant.clone())
            }
            _ => Err(AuthError::Unknown),
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Arc<Chain> {
        Chain::for_test()
    }

    /// alpha (two keys) and beta (one), and beta's chain.
    fn tenants() -> (Tenants, Arc<Chain>) {
        let mut tenants = Tenants::default();
        let key = |k: &str| -> Secret { serde_yaml::from_str(k).unwrap() };
        let alpha = Arc::new(Tenant {
            name: "alpha".into(),
            chain: chain(),
        });
        tenants.add(&[key("key-a1"), key("key-a2")], alpha);
        let beta_chain = chain();
        let beta = Arc::new(Tenant {
            name: "beta".into(),
            chain: beta_chain.clone(),
        });
        tenants.add(&[key("key-b")], beta);
        (tenants, beta_chain)
    }

    #[test]
    fn keys_map_to_tenants() {
        let (t, beta_chain) = tenants();
        assert_eq!(&*t.authenticate(Some("key-a1")).unwrap().name, "alpha");
        assert_eq!(&*t.authenticate(Some("key-a2")).unwrap().name, "alpha");
        assert_eq!(&*t.authenticate(Some("key-b")).unwrap().name, "beta");
        // The tenant a key finds carries its own chain.
        let beta = t.authenticate(Some("key-b")).unwrap();
        assert!(Arc::ptr_eq(&beta.chain, &beta_chain));
    }

    #[test]
    fn missing_and_unknown_keys() {
        let (t, _) = tenants();
        assert_eq!(t.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(t.authenticate(Some("  ")).unwrap_err(), AuthError::Missing);
        assert_eq!(
            t.authenticate(Some("key-a")).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            t.authenticate(Some("key-a1x")).unwrap_err(),
            AuthError::Unknown
        );
    }
}
