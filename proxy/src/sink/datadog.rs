//! Datadog's logs intake (`<endpoint>/api/v2/logs`): the batch as a JSON
//! array of the events as they arrived, with each tenant's upstream key.
use super::backend::{Protocol, SendError};
use super::client::join;
use crate::config::DatadogConfig;
use http::header::HeaderValue;
use http::HeaderMap;

pub struct Datadog {
    url: String,
}

impl Datadog {
    pub fn new(cfg: &DatadogConfig) -> Datadog {
        Datadog {
            url: join(&cfg.endpoint, "/api/v2/logs"),
        }
    }
}

impl Protocol for Datadog {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn tenant_headers(&self, key: Option<&str>, out: &mut HeaderMap) -> Result<(), SendError> {
        if let Some(key) = key {
            let mut v = HeaderValue::try_from(key).map_err(|_| SendError::UpstreamKey)?;
            v.set_sensitive(true);
            out.insert("dd-api-key", v);
        }
        Ok(())
    }

    fn body(&self, ndjson: Vec<u8>, _tenant: &str) -> Vec<u8> {
        json_array(ndjson)
    }
}

/// The same lines as a JSON array: they are compact JSON, so every newline byte is a separator.
pub fn json_array(mut ndjson: Vec<u8>) -> Vec<u8> {
    if ndjson.last() == Some(&b'\n') {
        ndjson.pop();
    }
    for b in ndjson.iter_mut() {
        if *b == b'\n' {
            *b = b',';
        }
    }
    let mut out = Vec::with_capacity(ndjson.len() + 2);
    out.push(b'[');
    out.extend_from_slice(&ndjson);
    out.push(b']');
    out
}
