use weir_sdk::{Event, Plugin, Verdict};

/// What goes under the plugin's `config:` in the proxy's YAML. `deny_unknown_fields` turns a typo (`tema:`) into
/// an error that stops the proxy from starting instead of a setting silently ignored; `team` has no default, so
/// a config without it is refused too.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    team: String,
    #[serde(default)]
    drop_containing: Option<String>,
}

pub struct MyFilter(Config);

impl Plugin for MyFilter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.team.is_empty() {
            return Err("`team` must not be empty".into());
        }
        Ok(MyFilter(config))
    }

    fn process(&mut self, event: &mut Event) -> Verdict {
        if let Some(s) = &self.0.drop_containing {
            if event.message.contains(s.as_str()) {
                return Verdict::Drop; // neither indexed nor archived
            }
        }
        if event.status.as_deref() == Some("debug") {
            return Verdict::ArchiveOnly; // archived, not indexed
        }
        event.tags.push(format!("team:{}", self.0.team));
        Verdict::Keep
    }
}

weir_sdk::export_plugin!(MyFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::serde_json::json;
    use weir_sdk::testing;

    #[test]
    fn drops_health_checks_archives_debug_tags_the_rest() {
        let config = json!({"team": "payments", "drop_containing": "/health"});
        let mut p: MyFilter = testing::init(config).unwrap();
        let (v, _) = testing::run_one(&mut p, Event::with_message("GET /health 200"));
        assert_eq!(v, Verdict::Drop);
        let mut debug = Event::with_message("cache miss");
        debug.status = Some("debug".into());
        assert_eq!(testing::run_one(&mut p, debug).0, Verdict::ArchiveOnly);
        let (v, ev) = testing::run_one(&mut p, Event::with_message("GET /api 200"));
        assert_eq!(v, Verdict::Keep);
        assert_eq!(ev.tags, ["team:payments"]);
    }

    #[test]
    fn config_mistakes_are_refused() {
        let err = |config| testing::init::<MyFilter>(config).err().unwrap();
        assert_eq!(
            err(json!(null)),
            "invalid plugin config: missing field `team`"
        );
        assert!(err(json!({"team": "a", "drop_contianing": "x"}))
            .contains("unknown field `drop_contianing`"));
        assert_eq!(err(json!({"team": ""})), "`team` must not be empty");
    }
}
