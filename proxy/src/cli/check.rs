//! `weir check`: validates a config, plugins included, the way `weir run` would load it,
//! and says what run-time changes saved in the data directory override in it.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// YAML config; without it, the embedded local default (config/weir.yaml).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), String> {
    let path = args.config.as_deref();
    // RUST_LOG overrides `log.level` at start, so it is checked too.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        if !filter.trim().is_empty() {
            weir::config::check_log_filter(&filter).map_err(|e| format!("RUST_LOG: {e}"))?;
        }
    }
    // The same resolution as `weir run` and a reload...
    let plan = weir::plan::Plan::load(path).map_err(|e| e.to_string())?;
    // ...and every plugin compiled, linked and initialized too, so a bad one shows up here.
    weir::plugin::Plugins::check(&plan.config).map_err(|e| e.to_string())?;
    // ...and every archive store's settings and credentials parsed (no request made).
    weir::archive::check_stores(&plan).map_err(|e| format!("{e:#}"))?;
    let config = &plan.config;
    println!("{}: ok", super::config_name(path));
    // Changes made at run time win over the YAML on start: say which.
    let yaml = weir::admin::control::Overrides::from_config(config);
    if let Some(saved) =
        weir::admin::control::Overrides::load(&config.data_dir).map_err(|e| e.to_string())?
    {
        for d in saved.differences(&yaml) {
            println!(
                "note: {} overrides the YAML: {d}",
                config.data_dir.join("runtime.json").display()
            );
        }
    }
    Ok(())
}
