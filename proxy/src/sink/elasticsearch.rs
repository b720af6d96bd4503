//! Elasticsearch or OpenSearch `_bulk` (`<endpoint>/_bulk`): per event a
//! `create` action naming the index, then the document; the answer says per
//! item what failed (429 and 5xx to send again, the rest refused for good).
use super::backend::{BuildError, Protocol, SendError, Sent};
use super::client::{insert_headers, join};
use super::lines::{heads, Line};
use crate::config::ElasticsearchConfig;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

pub struct Elasticsearch {
    cfg: ElasticsearchConfig,
}

impl Elasticsearch {
    pub fn new(cfg: &ElasticsearchConfig) -> Elasticsearch {
        Elasticsearch { cfg: cfg.clone() }
    }
}

impl Protocol for Elasticsearch {
    fn url(&self) -> String {
        join(&self.cfg.endpoint, "/_bulk")
    }

    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn headers(&self, name: &str, out: &mut HeaderMap) -> Result<(), BuildError> {
        insert_headers(name, &self.cfg.headers, out)
    }

    fn body(&self, ndjson: Vec<u8>, _tenant: &str) -> Vec<u8> {
        bulk(&ndjson, &self.cfg.index)
    }

    fn read_answer(
        &self,
        status: StatusCode,
        answer: &[u8],
        events: usize,
    ) -> Result<Sent, SendError> {
        // Which items failed is unknown when the answer cannot be read or
        // lacks items: the whole batch is sent again.
        let failures = failures(answer, events).map_err(|e| SendError::Answer {
            status,
            retry_after: None,
            why: format!("with {e}"),
        })?;
        let mut sent = Sent::default();
        for (i, status, reason) in failures {
            if status == 429 || status >= 500 {
                sent.retry.push(i);
            } else {
                sent.rejected.push((i, status, reason));
            }
        }
        Ok(sent)
    }
}

fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// `_bulk` lines for an NDJSON batch. `index` may hold `%Y`, `%m`, `%d`: the
/// event's UTC date (daily indices).
pub fn bulk(ndjson: &[u8], index: &str) -> Vec<u8> {
    let lines = heads(ndjson);
    let mut out = Vec::with_capacity(ndjson.len() + lines.len() * 64);
    let action = |index: &str| {
        let mut a = serde_json::to_vec(&json!({"create": {"_index": index}})).unwrap();
        a.push(b'\n');
        a
    };
    let fixed = (!index.contains('%')).then(|| action(index));
    for l in &lines {
        match &fixed {
            Some(a) => out.extend_from_slice(a),
            None => out.extend_from_slice(&action(&utc(l.timestamp).format(index).to_string())),
        }
        document(&mut out, l);
    }
    out
}

/// The event's JSON with an `@timestamp`: written in front of the line as it
/// is, unless the event has an `@timestamp` of its own (then it is replaced).
fn document(out: &mut Vec<u8>, l: &Line) {
    let stamp = json!(utc(l.timestamp).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let json = l.json.as_bytes();
    let own = memchr::memmem::find(json, b"\"@timestamp\"").is_some();
    match json.strip_prefix(b"{").filter(|_| !own) {
        Some(rest) => {
            out.extend_from_slice(b"{\"@timestamp\":");
            serde_json::to_writer(&mut *out, &stamp).unwrap();
            if rest.trim_ascii_start().first() != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(rest);
        }
        None => {
            let mut doc: Value = serde_json::from_slice(json).unwrap_or_else(|_| json!({}));
            if let Some(m) = doc.as_object_mut() {
                m.insert("@timestamp".into(), stamp);
            }
            serde_json::to_writer(&mut *out, &doc).unwrap();
        }
    }
    out.push(b'\n');
}

/// A `_bulk` answer that does not say what became of every document.
#[derive(Debug, thiserror::Error)]
pub enum BulkAnswerError {
    #[error("unreadable _bulk answer: {0}")]
    Unreadable(#[from] serde_json::Error),
    #[error("a _bulk answer with {items} items for {documents} documents")]
    ItemCount { items: usize, documents: usize },
}

/// A `_bulk` answer, as far as Weir reads it: Elasticsearch and OpenSearch
/// answer with one item per action, in order, whether `errors` is true or
/// not, so `items` is required and `errors` not read.
#[derive(serde::Deserialize)]
struct BulkAnswer {
    items: Vec<Item>,
}

/// One item: `{"<action>": {"status": .., "error": {..}, ..}}`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Item {
    Create(ItemResult),
    Index(ItemResult),
    Update(ItemResult),
    Delete(ItemResult),
}

#[derive(serde::Deserialize)]
struct ItemResult {
    /// Missing: read as a 500 (sent again).
    status: Option<u16>,
    #[serde(default)]
    error: Option<Value>,
}

/// Per-item outcome of a `_bulk` answer to `documents` documents: (item
/// index, status, reason) of each item that did not succeed. An answer
/// without an item per document says nothing of the others: an error, so
/// the whole batch is sent again (at least once, never lost).
pub fn failures(
    answer: &[u8],
    documents: usize,
) -> Result<Vec<(usize, u16, String)>, BulkAnswerError> {
    let answer: BulkAnswer = serde_json::from_slice(answer)?;
    if answer.items.len() != documents {
        return Err(BulkAnswerError::ItemCount {
            items: answer.items.len(),
            documents,
        });
    }
    Ok(answer
        .items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let (Item::Create(r) | Item::Index(r) | Item::Update(r) | Item::Delete(r)) = item;
            let status = r.status.unwrap_or(500);
            (status >= 300).then(|| {
                let error = r.error.unwrap_or(Value::Null);
                let reason = format!(
                    "{}: {}",
                    error["type"].as_str().unwrap_or("error"),
                    error["reason"].as_str().unwrap_or("")
                );
                (i, status, reason)
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::lines::tests::{ndjson, sample};
    use super::*;

    #[test]
    fn bulk_lines_pair_an_action_with_a_document() {
        let body = bulk(&ndjson(&sample()), "logs-%Y.%m.%d");
        let lines: Vec<Value> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], json!({"create": {"_index": "logs-2023.11.14"}}));
        assert_eq!(lines[1]["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(lines[1]["http"]["status_code"], 200);
        assert_eq!(lines[3]["message"], "later");
        let answer = json!({"errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
        ]});
        let f = failures(answer.to_string().as_bytes(), 3).unwrap();
        assert_eq!(f[0], (1, 400, "mapper_parsing_exception: bad".to_string()));
        assert_eq!((f[1].0, f[1].1), (2, 429));
        let created = r#"{"create":{"_index":"i","status":201,"result":"created"}}"#;
        let fine = format!(r#"{{"took":2,"errors":false,"items":[{created},{created}]}}"#);
        assert!(failures(fine.as_bytes(), 2).unwrap().is_empty());
    }

    /// Elasticsearch answers `_bulk` with an item per action, in order,
    /// whatever `errors` says: a 2xx that does not is no delivery.
    #[test]
    fn a_bulk_answer_must_account_for_every_document() {
        let es = Elasticsearch::new(&ElasticsearchConfig {
            endpoint: "http://es".into(),
            index: "i".into(),
            headers: Default::default(),
        });
        let created = r#"{"create":{"status":201}}"#;
        let busy = r#"{"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"busy"}}}"#;
        let not_bulk = [
            "{}".to_string(),
            r#"{"acknowledged":true}"#.to_string(),
            r#"{"errors":false}"#.to_string(),
            r#"{"errors":false,"items":[]}"#.to_string(),
            format!(r#"{{"errors":false,"items":[{created},{created}]}}"#),
            format!(r#"{{"errors":true,"items":[{busy}]}}"#),
            format!(r#"{{"errors":true,"items":[{created},{created},{busy},{busy}]}}"#),
            format!(r#"{{"errors":false,"items":{created}}}"#),
            "[]".to_string(),
        ];
        for answer in not_bulk {
            let e = es
                .read_answer(StatusCode::OK, answer.as_bytes(), 3)
                .expect_err(&answer);
            assert!(e.retryable(), "{answer}: sent again, not dropped");
        }
        let sent = es
            .read_answer(
                StatusCode::OK,
                format!(r#"{{"errors":true,"items":[{created},{busy},{created}]}}"#).as_bytes(),
                3,
            )
            .unwrap();
        assert_eq!(sent.retry, [1]);
        let sent = es
            .read_answer(
                StatusCode::OK,
                format!(r#"{{"errors":false,"items":[{created},{created},{created}]}}"#).as_bytes(),
                3,
            )
            .unwrap();
        assert!(sent.retry.is_empty() && sent.rejected.is_empty());
    }

    #[test]
    fn an_event_with_its_own_timestamp_field_gets_one_at_timestamp() {
        let body = bulk(
            b"{\"message\":\"m\",\"timestamp\":0,\"@timestamp\":\"theirs\"}\n",
            "i",
        );
        let doc: Value =
            serde_json::from_slice(body.split(|&b| b == b'\n').nth(1).unwrap()).unwrap();
        assert_eq!(doc["@timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(doc["message"], "m");
    }
}
