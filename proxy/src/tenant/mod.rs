//! Tenants and the API keys that identify them. Keys are looked up by their
//! SHA-256 digest and then compared in constant time, so neither the lookup
//! nor the comparison leaks how much of a guessed key was right. Keys are
//! never logged, never exported in metrics; only tenant names are.
use crate::config::{Config, Secret};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    /// Index into the configured tenants (and the routes built from them).
    pub index: usize,
    pub upstream_api_key: Option<Secret>,
}

pub struct Tenants {
    by_digest: HashMap<[u8; 32], (Secret, Arc<Tenant>)>,
    all: Vec<Arc<Tenant>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No key in the request: 401.
    Missing,
    /// A key no tenant owns: 403.
    Unknown,
}

impl Tenants {
    pub fn from_config(config: &Config) -> Tenants {
        let mut by_digest = HashMap::new();
        let mut all = Vec::new();
        for (index, t) in config.tenants.iter().enumerate() {
            let tenant = Arc::new(Tenant {
                name: t.name.clone(),
                index,
                upstream_api_key: t.upstream_api_key.clone(),
            });
            for key in &t.api_keys {
                by_digest.insert(digest(key.expose()), (key.clone(), tenant.clone()));
            }
            all.push(tenant);
        }
        Tenants { by_digest, all }
    }

    pub fn all(&self) -> &[Arc<Tenant>] {
        &self.all
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

    fn tenants() -> Tenants {
        let text = "listeners: [{name: i, address: \"127.0.0.1:0\", protocol: http}]\narchive: {store: {type: local, root: /tmp/a}}\nbackends: [{name: b, type: file, path: /tmp/o}]\ntenants:\n  - {name: alpha, api_keys: [key-a1, key-a2], backend: b}\n  - {name: beta, api_keys: [key-b], backend: b}\n";
        Tenants::from_config(&Config::parse(text, "t.yaml").unwrap())
    }

    #[test]
    fn keys_map_to_tenants() {
        let t = tenants();
        assert_eq!(t.authenticate(Some("key-a1")).unwrap().name, "alpha");
        assert_eq!(t.authenticate(Some("key-a2")).unwrap().name, "alpha");
        assert_eq!(t.authenticate(Some("key-b")).unwrap().name, "beta");
        assert_eq!(t.authenticate(Some("key-b")).unwrap().index, 1);
    }

    #[test]
    fn missing_and_unknown_keys() {
        let t = tenants();
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
