//! Which config field a plugin load error is about, naming the plugin's own config field when the plugin said
//! which one it refused.
//!
//! [`Plugins::load`](super::Plugins::load) and [`Plugins::check`](super::Plugins::check) report the config field of
//! the plugin that failed (`tenants[0].plugins[1]`), refined by [`refine_field`]: when its `weir_init` refused the
//! config and the message says where, in the form the SDK writes (``invalid plugin config at `limits.max`: ...``),
//! the field is that path under the plugin's `config` (`tenants[0].plugins[1].config.limits.max`); any other
//! refusal points at the `config` itself. The config's [`Origin`](crate::config::Origin) then finds the line of
//! that field, or of the nearest enclosing one that the YAML has.

/// What [`Plugin`](super::Plugin) puts before the message of a `weir_init` that refused its config.
pub(crate) const INIT_REFUSED: &str = "weir_init refused the config: ";

/// The field a plugin load error is about (`field`: the plugin's, `tenants[0].plugins[1]`): under the plugin's
/// `config` when `weir_init` refused it.
pub fn refine_field(field: &str, message: &str) -> String {
    let Some(refusal) = message
        .find(INIT_REFUSED)
        .map(|at| &message[at + INIT_REFUSED.len()..])
    else {
        return field.to_string();
    };
    let at = refusal
        .strip_prefix("invalid plugin config at `")
        .and_then(|rest| rest.split_once("`:"))
        .map(|(path, _)| path)
        .filter(|p| !p.is_empty() && !p.contains(char::is_whitespace));
    match at {
        Some(path) if path.starts_with('[') => format!("{field}.config{path}"),
        Some(path) => format!("{field}.config.{path}"),
        None => format!("{field}.config"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{invalid, ConfigError, Origin};

    fn config_error_in(
        file: &str,
        text: Option<&str>,
        field: String,
        message: String,
    ) -> ConfigError {
        Origin::new(file, text.unwrap_or("")).locate(invalid(field, message))
    }

    const YAML: &str = "tenants:
  - name: a
    plugins:
      - name: first
        path: x.wasm
      - name: second
        path: y.wasm
        config:
          team: 5
          limits: {max: -1}
          custom:
            - {name: n, patern: p}
";

    fn refusal(plugin_says: &str) -> String {
        format!("plugin \"second\" (y.wasm): {INIT_REFUSED}{plugin_says}")
    }

    #[test]
    fn locates_the_field_the_plugin_refused() {
        let at = "tenants[0].plugins[1]".to_string();
        for (says, field, line, column) in [
            (
                "invalid plugin config at `team`: invalid type: integer `5`, expected a string",
                "tenants[0].plugins[1].config.team",
                9,
                11,
            ),
            (
                "invalid plugin config at `limits.max`: invalid value: integer `-1`, expected u32",
                "tenants[0].plugins[1].config.limits.max",
                10,
                20,
            ),
            (
                "invalid plugin config at `custom[0].patern`: unknown field `patern`",
                "tenants[0].plugins[1].config.custom[0].patern",
                12,
                25,
            ),
            // A path the YAML does not have (a missing field's parent is the config): the nearest that it has.
            (
                "invalid plugin config at `nested.deeper`: missing field `team`",
                "tenants[0].plugins[1].config.nested.deeper",
                8,
                9,
            ),
            // No path, or a plugin not written with the SDK: the plugin's `config`.
            (
                "invalid plugin config: missing field `team`",
                "tenants[0].plugins[1].config",
                8,
                9,
            ),
            ("bad config, go away", "tenants[0].plugins[1].config", 8, 9),
        ] {
            let e = config_error_in(
                "w.yaml",
                Some(YAML),
                refine_field(&at, &refusal(says)),
                refusal(says),
            );
            assert_eq!(e.field.as_deref(), Some(field), "{says}");
            assert_eq!((e.line, e.column), (Some(line), Some(column)), "{says}");
            assert_eq!(e.message, refusal(says));
            assert!(
                e.to_string()
                    .starts_with(&format!("w.yaml:{line}:{column}: field `{field}`: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn other_load_errors_keep_their_field() {
        let message = "plugin \"first\" (x.wasm): the plugin speaks ABI version 2";
        let field = refine_field("tenants[0].plugins[0]", message);
        let e = config_error_in("w.yaml", Some(YAML), field, message.into());
        assert_eq!(e.field.as_deref(), Some("tenants[0].plugins[0]"));
        assert_eq!(e.line, Some(4));
        let e = config_error_in(
            "w.yaml",
            None,
            "tenants[0].plugins[0].path".into(),
            "cannot read".into(),
        );
        assert_eq!((e.line, e.column), (None, None));
        assert_eq!(
            e.to_string(),
            "w.yaml: field `tenants[0].plugins[0].path`: cannot read"
        );
    }
}
