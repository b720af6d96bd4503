//! `weir run`: the proxy.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// YAML config; without it, the embedded local default (config/weir.yaml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), String> {
    let config = super::load_config(args.config.as_deref()).map_err(|e| e.to_string())?;
    weir::telemetry::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    runtime
        .block_on(weir::run(config, args.config))
        .map_err(|e| {
            tracing::error!("{e:#}");
            format!("{e:#}")
        })
}
