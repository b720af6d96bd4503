//! Opening the object store an archive config names: a local directory, S3
//! (or any S3-compatible store), Google Cloud Storage or Azure Blob Storage.
//!
//! Opening does not touch the network (the cloud builders only check their
//! settings); a store that cannot be reached shows up as failed writes, which
//! the archive writer retries. Errors name the store (`s3://bucket/prefix`, ...)
//! and never contain a credential.
use crate::config::{Secret, StoreConfig};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, StaticCredentialProvider};
use std::net::IpAddr;
use std::sync::Arc;

/// The region S3 requests are signed for when neither the config nor the
/// environment (AWS_REGION, AWS_DEFAULT_REGION) names one.
const DEFAULT_S3_REGION: &str = "us-east-1";

/// Opens the store `cfg` names.
pub fn open(cfg: &StoreConfig) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match cfg {
        StoreConfig::Local { root } => {
            std::fs::create_dir_all(root).map_err(|e| {
                anyhow::anyhow!("cannot create archive directory {}: {e}", root.display())
            })?;
            let fs = LocalFileSystem::new_with_prefix(root)
                .map_err(|e| anyhow::anyhow!("archive directory {}: {e}", root.display()))?;
            Ok(Arc::new(fs))
        }
        StoreConfig::S3 { prefix, .. } => {
            let name = format!("S3 archive store {}", cfg.url());
            let secrets = cfg.secrets();
            let store = s3(cfg).map_err(|e| named(&name, e, &secrets))?;
            with_prefix(store, prefix).map_err(|e| named(&name, e, &secrets))
        }
        StoreConfig::Gcs {
            bucket,
            prefix,
            service_account_path,
            service_account_key,
            endpoint,
            allow_http,
        } => {
            let name = format!("GCS archive store {}", cfg.url());
            let secrets = cfg.secrets();
            let mut b = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(quick_retries());
            match (service_account_path, service_account_key) {
                (Some(_), Some(_)) => anyhow::bail!(
                    "{name}: set service_account_path or service_account_key, not both"
                ),
                (Some(path), None) => {
                    let path = path.to_str().ok_or_else(|| {
                        anyhow::anyhow!(
                            "{name}: service_account_path {} is not valid UTF-8",
                            path.display()
                        )
                    })?;
                    b = b.with_service_account_path(path);
                }
                (None, Some(key)) => b = b.with_service_account_key(key.expose()),
                (None, None) => {}
            }
            if let Some(endpoint) = endpoint {
                let endpoint = base_url(endpoint, *allow_http).map_err(|e| named(&name, e, &[]))?;
                b = b.with_base_url(&endpoint);
            }
            if *allow_http {
                // As a config key: client options the environment set (a proxy) stay.
                b = b.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
            }
            let store = b.build().map_err(|e| named(&name, e.into(), &secrets))?;
            with_prefix(store, prefix).map_err(|e| named(&name, e, &secrets))
        }
        StoreConfig::Azure {
            account,
            container,
            prefix,
            access_key,
            endpoint,
            allow_http,
        } => {
            let name = format!("Azure archive store {}", cfg.url());
            let secrets = cfg.secrets();
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_account(account)
                .with_container_name(container)
                .with_retry(quick_retries());
            if let Some(key) = access_key {
                // Checked here: the decoder's own error would quote a character of the key.
                if !is_base64(key.expose()) {
                    anyhow::bail!("{name}: access_key is not valid base64 (use the storage account key as the Azure portal shows it)");
                }
                b = b.with_access_key(key.expose());
            }
            if let Some(endpoint) = endpoint {
                let endpoint = base_url(endpoint, *allow_http).map_err(|e| named(&name, e, &[]))?;
                b = b.with_endpoint(endpoint);
            }
            if *allow_http {
                b = b.with_allow_http(true);
            }
            let store = b.build().map_err(|e| named(&name, e.into(), &secrets))?;
            with_prefix(store, prefix).map_err(|e| named(&name, e, &secrets))
        }
    }
}

/// An endpoint given as a base URL, checked (http(s) with a host, no query,
/// plain http only when allowed) and parsed.
fn checked_endpoint(endpoint: &str, http_allowed: bool) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| anyhow::anyhow!("endpoint {endpoint:?} is not an http:// or https:// URL"))?;
    let (Some(scheme @ ("http" | "https")), Some(_)) = (uri.scheme_str(), uri.host()) else {
        anyhow::bail!("endpoint {endpoint:?} is not an http:// or https:// URL");
    };
    if scheme == "http" && !http_allowed {
        anyhow::bail!("endpoint {endpoint:?} is plain http; set `allow_http: true` to allow it (local test stores only)");
    }
    if uri.query().is_some() {
        anyhow::bail!("endpoint {endpoint:?} must not have a query string");
    }
    Ok(uri)
}

/// An endpoint as object_store takes a base URL: checked, no trailing slash.
fn base_url(endpoint: &str, http_allowed: bool) -> anyhow::Result<String> {
    checked_endpoint(endpoint, http_allowed)?;
    Ok(endpoint.trim_end_matches('/').to_string())
}

/// A few quick retries inside object_store; the archive writer's own loop
/// retries for as long as it takes, and logs and counts each failure, so an
/// outage shows in metrics within seconds instead of after a minute.
fn quick_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(20),
        ..Default::default()
    }
}

/// `name: error`, with every secret value the config holds masked, whatever the error says.
fn named(name: &str, e: anyhow::Error, secrets: &[&Secret]) -> anyhow::Error {
    let mut msg = format!("{e:#}");
    for s in secrets {
        if !s.expose().is_empty() {
            msg = msg.replace(s.expose(), "<redacted>");
        }
    }
    anyhow::anyhow!("{name}: {msg}")
}

/// Places every object under `prefix` (when there is one).
fn with_prefix<T: ObjectStore>(store: T, prefix: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Arc::new(store));
    }
    let path = ObjectPath::parse(trimmed).map_err(|e| anyhow::anyhow!("prefix {prefix:?}: {e}"))?;
    Ok(Arc::new(PrefixStore::new(store, path)))
}

fn s3(cfg: &StoreConfig) -> anyhow::Result<object_store::aws::AmazonS3> {
    let StoreConfig::S3 {
        bucket,
        region,
        endpoint,
        path_style,
        allow_http,
        access_key_id,
        secret_access_key,
        session_token,
        ..
    } = cfg
    else {
        unreachable!("s3() takes an S3 config")
    };
    // The environment (AWS_*) first, as the AWS SDKs read it; the config file wins.
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(quick_retries());
    let region = region
        .clone()
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Region))
        .unwrap_or_else(|| DEFAULT_S3_REGION.to_string());
    b = b.with_region(region);
    if *allow_http {
        b = b.with_allow_http(true);
    }
    let virtual_hosted = !path_style;
    b = b.with_virtual_hosted_style_request(virtual_hosted);

    // AWS_ENDPOINT_URL_S3 outranks AWS_ENDPOINT in object_store; the config outranks both.
    let endpoint = endpoint
        .clone()
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::S3Endpoint))
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
    if let Some(endpoint) = endpoint {
        let http_allowed = b
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "1" | "true" | "on" | "yes" | "y"
                )
            });
        let endpoint = s3_endpoint(&endpoint, bucket, virtual_hosted, http_allowed)?;
        b = b
            .with_endpoint(endpoint.clone())
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
    }

    match (access_key_id, secret_access_key) {
        (Some(id), Some(secret)) => {
            // Exactly these credentials: no session token or key left over from the environment.
            let credential = AwsCredential {
                key_id: id.expose().to_string(),
                secret_key: secret.expose().to_string(),
                token: session_token.as_ref().map(|t| t.expose().to_string()),
            };
            b = b.with_credentials(Arc::new(StaticCredentialProvider::new(credential)));
        }
        (Some(_), None) => anyhow::bail!("access_key_id is set but secret_access_key is not"),
        (None, Some(_)) => anyhow::bail!("secret_access_key is set but access_key_id is not"),
        (None, None) => {
            if let Some(token) = session_token {
                b = b.with_token(token.expose());
            }
        }
    }
    Ok(b.build()?)
}

/// The URL object_store takes as the endpoint: with path-style requests, the
/// service's base URL; with virtual-hosted-style ones, the bucket's own URL, so
/// `https://s3.example.com` becomes `https://<bucket>.s3.example.com` (unless
/// the bucket is already there).
fn s3_endpoint(
    endpoint: &str,
    bucket: &str,
    virtual_hosted: bool,
    http_allowed: bool,
) -> anyhow::Result<String> {
    let uri = checked_endpoint(endpoint, http_allowed)?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let path = uri.path().trim_end_matches('/');
    if !virtual_hosted || host.starts_with(&format!("{bucket}.")) {
        return Ok(format!("{scheme}://{host}{port}{path}"));
    }
    if host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        anyhow::bail!("endpoint {endpoint:?} is an IP address, which cannot take the bucket as a subdomain; set `path_style: true`");
    }
    Ok(format!("{scheme}://{bucket}.{host}{port}{path}"))
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    fn secret(s: &str) -> Secret {
        serde_yaml::from_str(&format!("{s:?}")).unwrap()
    }

    fn s3_cfg(endpoint: Option<&str>, path_style: bool, allow_http: bool) -> StoreConfig {
        StoreConfig::S3 {
            bucket: "logs".into(),
            prefix: "archive".into(),
            region: Some("eu-west-1".into()),
            endpoint: endpoint.map(String::from),
            path_style,
            allow_http,
            access_key_id: Some(secret("AKIDEXAMPLE")),
            secret_access_key: Some(secret("wJalrXUtnFEMI-very-secret")),
            session_token: None,
        }
    }

    #[test]
    fn endpoint_for_virtual_hosted_and_path_style_requests() {
        assert_eq!(
            s3_endpoint("https://s3.example.com/", "logs", true, false).unwrap(),
            "https://logs.s3.example.com"
        );
        assert_eq!(
            s3_endpoint("https://logs.s3.example.com", "logs", true, false).unwrap(),
            "https://logs.s3.example.com"
        );
        assert_eq!(
            s3_endpoint("https://s3.example.com:8443/base/", "logs", false, false).unwrap(),
            "https://s3.example.com:8443/base"
        );
        assert_eq!(
            s3_endpoint("http://127.0.0.1:9000", "logs", false, true).unwrap(),
            "http://127.0.0.1:9000"
        );
        let e = s3_endpoint("http://127.0.0.1:9000", "logs", true, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("path_style: true"), "{e}");
        let e = s3_endpoint("http://minio:9000", "logs", false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_http"), "{e}");
        assert!(s3_endpoint("minio:9000", "logs", false, true).is_err());
        assert!(s3_endpoint("ftp://minio", "logs", false, true).is_err());
    }

    #[test]
    fn s3_store_opens_without_network() {
        open(&s3_cfg(Some("http://127.0.0.1:9"), true, true)).unwrap();
        open(&s3_cfg(None, false, false)).unwrap();
    }

    #[test]
    fn s3_errors_name_the_store_and_hide_secrets() {
        let e = open(&s3_cfg(Some("http://127.0.0.1:9"), true, false))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("S3 archive store s3://logs/archive: "), "{e}");
        assert!(e.contains("allow_http"), "{e}");

        let mut cfg = s3_cfg(None, false, false);
        if let StoreConfig::S3 {
            secret_access_key, ..
        } = &mut cfg
        {
            *secret_access_key = None;
        }
        let e = open(&cfg).err().unwrap().to_string();
        assert_eq!(
            e,
            "S3 archive store s3://logs/archive: access_key_id is set but secret_access_key is not"
        );

        // Whatever the cause, a secret that makes it into a message is masked.
        let secrets = [&secret("wJalrXUtnFEMI-very-secret")];
        let e = named(
            "S3 archive store s3://logs",
            anyhow::anyhow!("bad key wJalrXUtnFEMI-very-secret"),
            &secrets,
        )
        .to_string();
        assert_eq!(e, "S3 archive store s3://logs: bad key <redacted>");
    }

    #[test]
    fn gcs_error_names_the_store() {
        let cfg = StoreConfig::Gcs {
            bucket: "logs".into(),
            prefix: "".into(),
            service_account_path: Some("/nonexistent/weir-sa.json".into()),
            service_account_key: None,
            endpoint: None,
            allow_http: false,
        };
        let e = open(&cfg).err().unwrap().to_string();
        assert!(e.starts_with("GCS archive store gs://logs: "), "{e}");
        assert!(e.contains("/nonexistent/weir-sa.json"), "{e}");
    }

    #[test]
    fn azure_store_opens_and_bad_key_is_not_quoted() {
        let ok = StoreConfig::Azure {
            account: "acct".into(),
            container: "logs".into(),
            prefix: "a/b".into(),
            access_key: Some(secret("c2VjcmV0LWtleQ==")),
            endpoint: None,
            allow_http: false,
        };
        open(&ok).unwrap();
        let bad = StoreConfig::Azure {
            account: "acct".into(),
            container: "logs".into(),
            prefix: "".into(),
            access_key: Some(secret("not base64 at all!")),
            endpoint: None,
            allow_http: false,
        };
        let e = open(&bad).err().unwrap().to_string();
        assert!(
            e.starts_with("Azure archive store azure://acct/logs: "),
            "{e}"
        );
        assert!(!e.contains("not base64 at all"), "{e}");
    }

    #[tokio::test]
    async fn prefix_places_objects_under_it() {
        let inner = Arc::new(InMemory::new());
        let store = with_prefix(Arc::clone(&inner), "/archive/v1/").unwrap();
        store
            .put(
                &ObjectPath::from("acme/dt=2024-01-02/hour=03/x.ndjson.gz"),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
        inner
            .head(&ObjectPath::from(
                "archive/v1/acme/dt=2024-01-02/hour=03/x.ndjson.gz",
            ))
            .await
            .unwrap();
        assert!(with_prefix(InMemory::new(), "a//b").is_err());
    }
}
