//! `json-parse`: when an event's message is a JSON object, its fields become attributes.
//!
//! Config (all optional):
//!
//! * `target` (string, default none): put the object under this attribute instead of merging its fields into the
//!   top level of `attributes`. Merged fields overwrite existing attributes of the same name.
//! * `keep_message` (bool, default `false`): keep the raw JSON as the message. When `false`, the message becomes
//!   the object's `message` field if that is a string (the field is then not repeated in the attributes), and the
//!   empty string otherwise.
//!
//! Messages that are not a JSON object (including invalid JSON and JSON arrays or scalars) are left unchanged.
//! Every event is kept. Counters: `parsed`, `not_json`.

use serde_json::{Map, Value};
use weir_sdk::{Event, Fields, Plugin, Verdict};

#[derive(serde::Deserialize, Default, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub target: Option<String>,
    pub keep_message: bool,
}

pub struct JsonParse {
    config: Config,
}

impl JsonParse {
    /// Parses one event; returns whether its message was a JSON object.
    fn parse(&self, event: &mut Event) -> bool {
        let trimmed = event.message.trim();
        if !trimmed.starts_with('{') || !trimmed.ends_with('}') {
            return false;
        }
        let mut fields: Map<String, Value> = match serde_json::from_str(trimmed) {
            Ok(f) => f,
            Err(_) => return false,
        };
        if !self.config.keep_message {
            event.message = match fields.remove("message") {
                Some(Value::String(s)) => s,
                Some(other) => {
                    fields.insert("message".to_string(), other);
                    String::new()
                }
                None => String::new(),
            };
        }
        match &self.config.target {
            Some(target) => {
                event
                    .attributes
                    .insert(target.clone(), Value::Object(fields));
            }
            None => event.attributes.extend(fields),
        }
        true
    }
}

impl Plugin for JsonParse {
    type Config = Config;
    // Reads the message and writes attributes: nothing else needs to cross the boundary.
    const FIELDS: Fields = Fields::MESSAGE.with(Fields::ATTRIBUTES);

    fn new(config: Config) -> Result<Self, String> {
        if config.target.as_deref() == Some("") {
            return Err(
                "json-parse: `target` must not be empty (omit it to merge at the top level)".into(),
            );
        }
        Ok(JsonParse { config })
    }

    fn process(&mut self, event: &mut Event) -> Verdict {
        self.parse(event);
        Verdict::Keep
    }

    fn process_batch(&mut self, events: &mut [Event]) -> Vec<Verdict> {
        self.process_batch_tracked(events)
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    // The parsed events are the changed ones: no copy of the batch to compare with.
    fn process_batch_tracked(&mut self, events: &mut [Event]) -> Vec<(Verdict, bool)> {
        let tracked: Vec<(Verdict, bool)> = events
            .iter_mut()
            .map(|e| (Verdict::Keep, self.parse(e)))
            .collect();
        let parsed = tracked.iter().filter(|(_, changed)| *changed).count() as i64;
        let not_json = events.len() as i64 - parsed;
        if parsed > 0 {
            weir_sdk::counter_add("parsed", parsed);
        }
        if not_json > 0 {
            weir_sdk::counter_add("not_json", not_json);
        }
        tracked
    }
}

weir_sdk::export_plugin!(JsonParse);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_sdk::testing;

    fn run(config: Value, message: &str) -> Event {
        let mut p: JsonParse = testing::init(config).unwrap();
        let mut ev = Event::with_message(message);
        ev.attributes.insert("existing".into(), json!("yes"));
        let (v, out) = testing::run_one(&mut p, ev);
        assert_eq!(v, Verdict::Keep);
        out
    }

    #[test]
    fn merges_fields_at_top_level_by_default() {
        let ev = run(
            Value::Null,
            r#" {"message":"hello","level":"warn","n":3,"f":1.5,"nested":{"a":[1,null,true]}} "#,
        );
        assert_eq!(ev.message, "hello");
        assert_eq!(ev.attributes["level"], json!("warn"));
        assert_eq!(ev.attributes["n"], json!(3));
        assert_eq!(ev.attributes["f"], json!(1.5));
        assert_eq!(ev.attributes["nested"], json!({"a": [1, null, true]}));
        assert_eq!(ev.attributes["existing"], json!("yes"));
        assert!(!ev.attributes.contains_key("message"));
    }

    #[test]
    fn nests_under_target_and_keeps_message() {
        let raw = r#"{"message":"hi","user":{"id":7}}"#;
        let ev = run(json!({"target": "json", "keep_message": true}), raw);
        assert_eq!(ev.message, raw);
        assert_eq!(
            ev.attributes["json"],
            json!({"message": "hi", "user": {"id": 7}})
        );
        assert_eq!(ev.attributes["existing"], json!("yes"));
    }

    #[test]
    fn message_without_message_field_becomes_empty() {
        let ev = run(json!({}), r#"{"a":1}"#);
        assert_eq!(ev.message, "");
        assert_eq!(ev.attributes["a"], json!(1));
        // A non-string `message` field stays an attribute.
        let ev = run(json!({}), r#"{"message":{"x":1}}"#);
        assert_eq!(ev.message, "");
        assert_eq!(ev.attributes["message"], json!({"x": 1}));
    }

    #[test]
    fn non_objects_are_unchanged() {
        let mut p: JsonParse = testing::init(Value::Null).unwrap();
        let events: Vec<Event> = ["plain text", "[1,2,3]", "42", "{not json}", "{\"a\":1", ""]
            .iter()
            .map(|m| Event::with_message(*m))
            .collect();
        let r = testing::run_raw(&mut p, &events);
        assert!(r
            .results
            .iter()
            .all(|r| r.verdict == Verdict::Keep && r.event.is_none()));
        assert_eq!(testing::counters()["not_json"], 6);
    }

    #[test]
    fn config_errors() {
        assert!(testing::init::<JsonParse>(json!({"target": ""})).is_err());
        assert!(testing::init::<JsonParse>(json!({"targte": "x"})).is_err());
        assert!(testing::init::<JsonParse>(json!({"keep_message": "yes"})).is_err());
    }
}
