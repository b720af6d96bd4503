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
    pub store: StoreConfig,
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
    /// Google Cloud Storage. Credentials: `service_account_path`, or the environment
    /// (GOOGLE_APPLICATION_CREDENTIALS / GOOGLE_SERVICE_ACCOUNT).
    Gcs {
        bucket: String,
        #[serde(default)]
        prefix: String,
        service_account_path: Option<PathBuf>,
    },
    /// Azure Blob Storage. Credentials: `access_key`, or the environment (AZURE_STORAGE_*).
    Azure {
        account: String,
        container: String,
        #[serde(default)]
        prefix: String,
        access_key: Option<Secret>,
    },
}

pub(super) fn validate_archive(a: &ArchiveConfig, at: &str) -> Result<(), Invalid> {
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
