//! Archives: where every accepted event is kept, whatever is indexed.
use super::units::{ByteSize, Dur, Secret};
use super::{invalid, Invalid};

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The one store objects go to (set this or `stores`).
    pub store: Option<StoreConfig>,
    /// Stores named in `archive_stores`, in order: each object goes to the
    /// first one that is up; the next ones are for disaster recovery.
    #[serde(default)]
    pub stores: Vec<String>,
    /// When objects move to the next store, and when they return.
    #[serde(default)]
    pub failover: StoreFailover,
    /// An object is written once it holds this many uncompressed bytes...
    #[serde(default = "default_object_bytes")]
    pub max_object_bytes: ByteSize,
    /// ...or once its oldest event is this old.
    #[serde(default = "default_object_age")]
    pub max_object_age: Dur,
    /// How objects are compressed: `gzip` (`.ndjson.gz`, what every tool
    /// reads) or `zstd` (`.ndjson.zst`: about twice as fast to write, smaller).
    #[serde(default)]
    pub compression: ArchiveCompression,
    /// gzip level 0-9, or zstd level 1-19.
    #[serde(default = "default_archive_level")]
    pub compression_level: u32,
    /// Memory events may wait in before being compressed into an object; past it, intake answers 503.
    #[serde(default = "default_archive_queue")]
    pub max_queued_bytes: ByteSize,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveCompression {
    #[default]
    Gzip,
    Zstd,
}

impl ArchiveCompression {
    /// The objects' file name ending.
    pub fn suffix(self) -> &'static str {
        match self {
            ArchiveCompression::Gzip => ".ndjson.gz",
            ArchiveCompression::Zstd => ".ndjson.zst",
        }
    }
}

pub(super) fn yes() -> bool {
    true
}
fn default_object_bytes() -> ByteSize {
    ByteSize::mib(64)
}
fn default_object_age() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_archive_level() -> u32 {
    1
}
fn default_archive_queue() -> ByteSize {
    ByteSize::mib(16)
}

/// A store defined once (`archive_stores`) and named by archives and regions.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedStore {
    /// Names the store in `stores` lists, metrics and `/readyz`.
    pub name: String,
    pub store: StoreConfig,
}

/// Disaster recovery between an archive's stores.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreFailover {
    /// Consecutive failed writes after which a store is down: objects go to the next store.
    #[serde(default = "default_after_failures")]
    pub after_failures: u32,
    /// How long a down store is left alone before the next object tries it again
    /// (one attempt; on success, objects return to it).
    #[serde(default = "default_retry_after")]
    pub retry_after: Dur,
}

impl Default for StoreFailover {
    fn default() -> Self {
        StoreFailover {
            after_failures: default_after_failures(),
            retry_after: default_retry_after(),
        }
    }
}

fn default_after_failures() -> u32 {
    3
}
fn default_retry_after() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// A directory on local disk (written through object_store's LocalFileSystem).
    Local { root: PathBuf },
    /// Amazon S3 or any S3-compatible store (MinIO, Ceph, moto, ...).
    /// Credentials not given here come from the environment (AWS_*), as the AWS SDKs do.
    S3 {
        bucket: String,
        /// Key prefix inside the bucket (no leading or trailing slash).
        #[serde(default)]
        prefix: String,
        region: Option<String>,
        /// For S3-compatible stores: their base URL.
        endpoint: Option<String>,
        /// Path-style URLs (`endpoint/bucket/key`), which most S3-compatible stores need.
        #[serde(default)]
        path_style: bool,
        /// Allow a plain-http endpoint (local test stores only).
        #[serde(default)]
        allow_http: bool,
        access_key_id: Option<Secret>,
        secret_access_key: Option<Secret>,
        session_token: Option<Secret>,
    },
    /// Google Cloud Storage. Credentials: `service_account_path` or
    /// `service_account_key` (the key file's JSON), or the environment
    /// (GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT).
    Gcs {
        bucket: String,
        #[serde(default)]
        prefix: String,
        service_account_path: Option<PathBuf>,
        service_account_key: Option<Secret>,
        /// Another base URL than `https://storage.googleapis.com` (a private endpoint, an emulator).
        endpoint: Option<String>,
        /// Allow a plain-http endpoint (local test stores only).
        #[serde(default)]
        allow_http: bool,
    },
    /// Azure Blob Storage. Credentials: `access_key`, or the environment (AZURE_STORAGE_*).
    Azure {
        account: String,
        container: String,
        #[serde(default)]
        prefix: String,
        access_key: Option<Secret>,
        /// The account's blob endpoint when not `https://<account>.blob.core.windows.net`
        /// (a sovereign cloud, a private endpoint, Azurite's `http://127.0.0.1:10000/devstoreaccount1`).
        endpoint: Option<String>,
        /// Allow a plain-http endpoint (local test stores only).
        #[serde(default)]
        allow_http: bool,
    },
}

impl StoreConfig {
    /// The texts to mask in any message about it: each credential, and the
    /// private key inside a GCS key's JSON (and its lines), which a message
    /// could quote apart from the JSON.
    pub fn secret_texts(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .secrets()
            .iter()
            .map(|s| s.expose().to_string())
            .collect();
        if let StoreConfig::Gcs {
            service_account_key: Some(key),
            ..
        } = self
        {
            let parsed: Option<serde_json::Value> = serde_json::from_str(key.expose()).ok();
            if let Some(pem) = parsed.as_ref().and_then(|v| v["private_key"].as_str()) {
                out.push(pem.to_string());
                out.extend(
                    pem.lines()
                        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                        .map(String::from),
                );
            }
        }
        out
    }

    /// The credentials it holds, to mask in any message about it.
    pub fn secrets(&self) -> Vec<&Secret> {
        match self {
            StoreConfig::Local { .. } => vec![],
            StoreConfig::S3 {
                access_key_id,
                secret_access_key,
                session_token,
                ..
            } => [access_key_id, secret_access_key, session_token]
                .into_iter()
                .flatten()
                .collect(),
            StoreConfig::Gcs {
                service_account_key,
                ..
            } => service_account_key.iter().collect(),
            StoreConfig::Azure { access_key, .. } => access_key.iter().collect(),
        }
    }

    /// `s3://bucket/prefix`, `gs://...`, `azure://account/container/prefix`,
    /// `file:///root`: how messages and listings name the store (no secret in it).
    pub fn url(&self) -> String {
        let join = |scheme: &str, parts: &[&str], prefix: &str| {
            let mut s = format!("{scheme}:/");
            for p in parts
                .iter()
                .copied()
                .chain(Some(prefix.trim_matches('/')).filter(|p| !p.is_empty()))
            {
                s.push('/');
                s.push_str(p);
            }
            s
        };
        match self {
            StoreConfig::Local { root } => format!("file://{}", root.display()),
            StoreConfig::S3 { bucket, prefix, .. } => join("s3", &[bucket], prefix),
            StoreConfig::Gcs { bucket, prefix, .. } => join("gs", &[bucket], prefix),
            StoreConfig::Azure {
                account,
                container,
                prefix,
                ..
            } => join("azure", &[account, container], prefix),
        }
    }
}

/// Names unique and usable as metric labels; every region's stores defined.
pub(super) fn validate_archive_stores(c: &super::Config) -> Result<(), Invalid> {
    let mut seen = std::collections::HashSet::new();
    for (i, s) in c.archive_stores.iter().enumerate() {
        let ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(invalid(
                format!("archive_stores[{i}].name"),
                format!(
                    "{:?}: store names use letters, digits, '.', '-' and '_' (at most 64)",
                    s.name
                ),
            ));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(invalid(
                format!("archive_stores[{i}].name"),
                format!("duplicate archive store name {:?}", s.name),
            ));
        }
    }
    for (i, r) in c.regions.iter().enumerate() {
        check_store_names(
            &r.archive_stores,
            &format!("regions[{i}].archive_stores"),
            &c.archive_stores,
        )?;
    }
    Ok(())
}

/// Each name defined in `archive_stores`, none twice.
fn check_store_names(names: &[String], at: &str, defined: &[NamedStore]) -> Result<(), Invalid> {
    for (j, n) in names.iter().enumerate() {
        if !defined.iter().any(|d| &d.name == n) {
            let known: Vec<&str> = defined.iter().map(|d| d.name.as_str()).collect();
            return Err(invalid(
                format!("{at}[{j}]"),
                format!("no archive store named {n:?}; archive_stores defines {known:?}"),
            ));
        }
        if names[..j].contains(n) {
            return Err(invalid(
                format!("{at}[{j}]"),
                format!("store {n:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_archive(
    a: &ArchiveConfig,
    at: &str,
    defined: &[NamedStore],
) -> Result<(), Invalid> {
    match (&a.store, a.stores.is_empty()) {
        (Some(_), false) => {
            return Err(invalid(
                format!("{at}.stores"),
                "set `store` (one store) or `stores` (names from archive_stores, in order), not both".into(),
            ))
        }
        (None, true) => {
            return Err(invalid(
                format!("{at}.store"),
                "an archive needs `store` (one store) or `stores` (names from archive_stores, in order)".into(),
            ))
        }
        _ => check_store_names(&a.stores, &format!("{at}.stores"), defined)?,
    }
    if a.failover.after_failures == 0 {
        return Err(invalid(
            format!("{at}.failover.after_failures"),
            "must be at least 1".into(),
        ));
    }
    let (levels, name) = match a.compression {
        ArchiveCompression::Gzip => (0..=9, "gzip level must be 0-9"),
        ArchiveCompression::Zstd => (1..=19, "zstd level must be 1-19"),
    };
    if !levels.contains(&a.compression_level) {
        return Err(invalid(format!("{at}.compression_level"), name.into()));
    }
    if a.max_object_bytes.0 == 0 {
        return Err(invalid(
            format!("{at}.max_object_bytes"),
            "must be at least 1".into(),
        ));
    }
    Ok(())
}
