//! `empty`: keeps every event unchanged. Used to measure the per-batch overhead of the plugin stage
//! (copy in, MessagePack decode, encode of `{verdict: keep, event: nil}` per event, copy out). It asks for no
//! fields, so what remains is the cost of the call and of one empty map and one result entry per event.

use weir_sdk::{Event, Fields, Plugin, Verdict};

pub struct Empty;

/// No options; any config given is ignored.
#[derive(serde::Deserialize, Default)]
pub struct Config {}

impl Plugin for Empty {
    type Config = Config;
    // Never modifies events: skip the SDK's copy-and-compare.
    const MODIFIES_EVENTS: bool = false;
    // Reads nothing: the host sends empty events, so a batch costs almost nothing to send and decode.
    const FIELDS: Fields = Fields::NONE;

    fn new(_config: Config) -> Result<Self, String> {
        Ok(Empty)
    }

    fn process(&mut self, _event: &mut Event) -> Verdict {
        Verdict::Keep
    }

    fn process_batch(&mut self, events: &mut [Event]) -> Vec<Verdict> {
        vec![Verdict::Keep; events.len()]
    }
}

weir_sdk::export_plugin!(Empty);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing;

    #[test]
    fn keeps_everything_unchanged() {
        let mut p: Empty = testing::init(serde_json::Value::Null).unwrap();
        let events: Vec<Event> = (0..100)
            .map(|i| Event::with_message(format!("line {i}")))
            .collect();
        let r = testing::run_raw(&mut p, &events);
        assert_eq!(r.results.len(), 100);
        assert!(r
            .results
            .iter()
            .all(|r| r.verdict == Verdict::Keep && r.event.is_none()));
    }

    #[test]
    fn ignores_any_config() {
        assert!(testing::init::<Empty>(serde_json::json!(null)).is_ok());
        assert!(testing::init::<Empty>(serde_json::json!({"anything": [1, 2]})).is_ok());
    }
}
