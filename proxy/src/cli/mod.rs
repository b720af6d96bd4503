//! The `weir` subcommands, one file each (its arguments and its body). Each body returns
//! `Err(message)` for `main` to print as `error: message` with exit status 1.
use std::path::Path;
pub use weir::config::EMBEDDED_NAME;

pub mod admin;
pub mod backends;
pub mod check;
pub mod patterns;
pub mod plugin_test;
pub mod query;
pub mod rehydrate;
pub mod run;
pub mod tail;

/// What `weir --version` prints after `weir `: the package version, then the git commit and
/// its date when built from a checkout (`0.1.0 (abc1234 2026-12-02)`; see build.rs).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("WEIR_BUILD_COMMIT"));

/// How messages name a config: its path, or the embedded default.
pub fn config_name(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string())
        .unwrap_or_else(|| EMBEDDED_NAME.into())
}

/// The bytes of `input`, or of stdin for `-`.
pub fn read_input(input: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if input.as_os_str() == "-" {
        let mut text = Vec::new();
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(|e| format!("stdin: {e}"))?;
        Ok(text)
    } else {
        std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))
    }
}

/// How messages name an input: its path, or `stdin`.
pub fn input_name(input: &Path) -> String {
    if input.as_os_str() == "-" {
        "stdin".into()
    } else {
        input.display().to_string()
    }
}
