//! Any HTTP endpoint (`url`): the batch as a JSON array or as NDJSON, with the user's headers.
use super::backend::{BuildError, Protocol};
use super::client::insert_headers;
use super::datadog::json_array;
use crate::config::{HttpConfig, HttpFormat};
use http::HeaderMap;

pub struct Http {
    cfg: HttpConfig,
}

impl Http {
    pub fn new(cfg: &HttpConfig) -> Http {
        Http { cfg: cfg.clone() }
    }
}

impl Protocol for Http {
    fn url(&self) -> String {
        self.cfg.url.clone()
    }

    fn content_type(&self) -> &'static str {
        match self.cfg.format {
            HttpFormat::Ndjson => "application/x-ndjson",
            HttpFormat::JsonArray => "application/json",
        }
    }

    fn headers(&self, name: &str, out: &mut HeaderMap) -> Result<(), BuildError> {
        insert_headers(name, &self.cfg.headers, out)
    }

    fn body(&self, ndjson: Vec<u8>, _tenant: &str) -> Vec<u8> {
        match self.cfg.format {
            HttpFormat::Ndjson => ndjson,
            HttpFormat::JsonArray => json_array(ndjson),
        }
    }
}
