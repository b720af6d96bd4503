//! `weir check`: validates a config, plugins included, the way `weir run` would load it.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// YAML config; without it, the embedded local default (config/weir.yaml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), String> {
    let path = args.config.as_deref();
    let config = super::load_config(path).map_err(|e| e.to_string())?;
    // Compile, link and initialize every plugin too, so a bad one shows up here.
    weir::plugin::Plugins::check(&config).map_err(|(field, message)| {
        weir::config::ConfigError {
            file: super::config_name(path),
            line: None,
            column: None,
            field: Some(field),
            message,
        }
        .to_string()
    })?;
    println!("{}: ok", super::config_name(path));
    Ok(())
}
