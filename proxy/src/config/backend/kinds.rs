//! The settings each backend type takes besides the shared ones, and the
//! checks only that type has. A backend's type decides its variant of
//! `BackendKind`, so a backend cannot hold another type's fields: a field of
//! another type is refused when the file is read, naming the field.
//! Adding a backend type: a variant and its settings here, a module in sink/.
use super::BackendType;
use crate::config::units::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A backend's type with the settings only that type takes.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendKind {
    Datadog(DatadogConfig),
    Http(HttpConfig),
    Elasticsearch(ElasticsearchConfig),
    SplunkHec(SplunkHecConfig),
    Otlp(OtlpConfig),
    Loki(LokiConfig),
    File(FileConfig),
}

/// Datadog's logs intake, with each tenant's upstream key.
#[derive(Debug, Clone, PartialEq)]
pub struct DatadogConfig {
    /// The service's base URL; batches go to `<endpoint>/api/v2/logs`.
    pub endpoint: String,
}

/// Any HTTP endpoint taking a JSON array or NDJSON.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// The full URL events are POSTed to.
    pub url: String,
    pub format: HttpFormat,
    /// Extra request headers (values may be `${ENV_VAR}`; never logged).
    pub headers: BTreeMap<String, Secret>,
}

/// Elasticsearch or OpenSearch `_bulk`.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticsearchConfig {
    pub endpoint: String,
    /// Default `weir-logs`; `%Y`, `%m`, `%d` take the event's UTC date.
    pub index: String,
    pub headers: BTreeMap<String, Secret>,
}

/// Splunk HTTP Event Collector.
#[derive(Debug, Clone, PartialEq)]
pub struct SplunkHecConfig {
    pub endpoint: String,
    /// The HEC token (`${ENV}` works; never logged).
    pub token: Secret,
    /// Default: the token's.
    pub index: Option<String>,
    /// Default `_json`.
    pub sourcetype: String,
    pub headers: BTreeMap<String, Secret>,
}

/// OpenTelemetry OTLP/HTTP logs (protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub headers: BTreeMap<String, Secret>,
}

/// Grafana Loki push API (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct LokiConfig {
    pub endpoint: String,
    /// Event fields that become stream labels, besides `tenant`.
    pub labels: Vec<String>,
    pub headers: BTreeMap<String, Secret>,
}

/// NDJSON appended to a local file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    /// Where lines are appended (`-` for stdout).
    pub path: PathBuf,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    #[default]
    JsonArray,
    Ndjson,
}

/// The fields only some types take, as read (RawBackend); `into_kind` sorts them by type.
pub(super) struct OwnFields {
    pub endpoint: Option<String>,
    pub index: Option<String>,
    pub token: Option<Secret>,
    pub sourcetype: Option<String>,
    pub labels: Option<Vec<String>>,
    pub url: Option<String>,
    pub path: Option<PathBuf>,
    pub format: Option<HttpFormat>,
    pub headers: Option<BTreeMap<String, Secret>>,
}

/// A backend's field refused once its type is known. Displayed as
/// "field `x`: why", which Config::parse turns into the field's path and line.
#[derive(Debug)]
pub struct Refusal {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

fn needs<T>(v: Option<T>, t: BackendType, field: &'static str) -> Result<T, Refusal> {
    v.ok_or_else(|| Refusal {
        field,
        message: match (t, field) {
            (BackendType::File, _) => "a file backend needs a path (`-` for stdout)".into(),
            (BackendType::SplunkHec, "token") => "a splunk_hec backend needs its HEC token".into(),
            _ => format!("a {t:?} backend needs `{field}`"),
        },
    })
}

impl OwnFields {
    /// The settings of a backend of type `t`: each type takes its fields; one left over is another type's.
    pub(super) fn into_kind(mut self, t: BackendType) -> Result<BackendKind, Refusal> {
        let endpoint = |f: &mut Self| needs(f.endpoint.take(), t, "endpoint");
        let headers = |f: &mut Self| f.headers.take().unwrap_or_default();
        let kind = match t {
            BackendType::Datadog => BackendKind::Datadog(DatadogConfig {
                endpoint: endpoint(&mut self)?,
            }),
            BackendType::Http => BackendKind::Http(HttpConfig {
                url: needs(self.url.take(), t, "url")?,
                format: self.format.take().unwrap_or_default(),
                headers: headers(&mut self),
            }),
            BackendType::Elasticsearch => BackendKind::Elasticsearch(ElasticsearchConfig {
                endpoint: endpoint(&mut self)?,
                index: self.index.take().unwrap_or_else(|| "weir-logs".into()),
                headers: headers(&mut self),
            }),
            BackendType::SplunkHec => BackendKind::SplunkHec(SplunkHecConfig {
                endpoint: endpoint(&mut self)?,
                token: needs(self.token.take(), t, "token")?,
                index: self.index.take(),
                sourcetype: self.sourcetype.take().unwrap_or_else(|| "_json".into()),
                headers: headers(&mut self),
            }),
            BackendType::Otlp => BackendKind::Otlp(OtlpConfig {
                endpoint: endpoint(&mut self)?,
                headers: headers(&mut self),
            }),
            BackendType::Loki => BackendKind::Loki(LokiConfig {
                endpoint: endpoint(&mut self)?,
                labels: self
                    .labels
                    .take()
                    .unwrap_or_else(|| vec!["service".into(), "source".into()]),
                headers: headers(&mut self),
            }),
            BackendType::File => BackendKind::File(FileConfig {
                path: needs(self.path.take(), t, "path")?,
            }),
        };
        match self.left_over() {
            Some(field) => Err(Refusal {
                field,
                message: format!("does not apply to a backend of type {t:?}"),
            }),
            None => Ok(kind),
        }
    }

    /// The first field the type did not take (one is named at a time).
    fn left_over(&self) -> Option<&'static str> {
        [
            ("path", self.path.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("url", self.url.is_some()),
            ("headers", self.headers.is_some()),
            ("index", self.index.is_some()),
            ("token", self.token.is_some()),
            ("sourcetype", self.sourcetype.is_some()),
            ("labels", self.labels.is_some()),
            ("format", self.format.is_some()),
        ]
        .into_iter()
        .find_map(|(f, set)| set.then_some(f))
    }
}

/// An `http://` or `https://` URL with a host.
fn check_url(field: &'static str, url: &str) -> Result<(), (&'static str, String)> {
    match url.parse::<http::Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some() => {
            Ok(())
        }
        _ => Err((field, format!("{url:?} is not an http:// or https:// URL"))),
    }
}

impl LokiConfig {
    /// Labels Weir can take from an event.
    pub const LABELS: [&'static str; 4] = ["service", "source", "host", "status"];

    fn validate(&self) -> Result<(), (&'static str, String)> {
        check_url("endpoint", &self.endpoint)?;
        match self
            .labels
            .iter()
            .find(|l| !Self::LABELS.contains(&l.as_str()))
        {
            Some(l) => Err((
                "labels",
                format!(
                    "{l:?}: labels can be service, source, host and status (tenant is always one)"
                ),
            )),
            None => Ok(()),
        }
    }
}

impl BackendKind {
    pub fn backend_type(&self) -> BackendType {
        match self {
            BackendKind::Datadog(_) => BackendType::Datadog,
            BackendKind::Http(_) => BackendType::Http,
            BackendKind::Elasticsearch(_) => BackendType::Elasticsearch,
            BackendKind::SplunkHec(_) => BackendType::SplunkHec,
            BackendKind::Otlp(_) => BackendType::Otlp,
            BackendKind::Loki(_) => BackendType::Loki,
            BackendKind::File(_) => BackendType::File,
        }
    }

    /// Where its batches go: the endpoint, URL or path as written.
    pub fn address(&self) -> String {
        match self {
            BackendKind::Datadog(c) => c.endpoint.clone(),
            BackendKind::Http(c) => c.url.clone(),
            BackendKind::Elasticsearch(c) => c.endpoint.clone(),
            BackendKind::SplunkHec(c) => c.endpoint.clone(),
            BackendKind::Otlp(c) => c.endpoint.clone(),
            BackendKind::Loki(c) => c.endpoint.clone(),
            BackendKind::File(c) => c.path.display().to_string(),
        }
    }

    /// The checks only this type has: (field under the backend, why).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            BackendKind::Http(c) => check_url("url", &c.url),
            BackendKind::Loki(c) => c.validate(),
            BackendKind::File(_) => Ok(()),
            _ => check_url("endpoint", &self.address()),
        }
    }
}
