//! `weir run`: the proxy.
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// YAML config; without it, the embedded local default (config/weir.yaml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Start from the YAML's exclusion rules and quotas: set aside the changes
    /// made at run time through the admin API (data_dir/runtime.json).
    #[arg(long)]
    discard_runtime_changes: bool,
}

pub fn run(args: Args) -> Result<(), String> {
    let plan = weir::plan::Plan::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if args.discard_runtime_changes {
        set_aside_runtime_changes(&plan.config.data_dir)?;
    }
    weir::telemetry::init_logging(&plan.config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the tokio runtime: {e}"))?;
    runtime.block_on(weir::run(plan, args.config)).map_err(|e| {
        tracing::error!("{e:#}");
        format!("{e:#}")
    })
}

/// Renames `runtime.json` aside (kept, not deleted), so the YAML applies.
fn set_aside_runtime_changes(data_dir: &std::path::Path) -> Result<(), String> {
    let saved = data_dir.join("runtime.json");
    if !saved.exists() {
        return Ok(());
    }
    let aside = saved.with_extension(format!(
        "json.discarded-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    std::fs::rename(&saved, &aside)
        .map_err(|e| format!("--discard-runtime-changes: {}: {e}", saved.display()))?;
    eprintln!(
        "run-time changes set aside in {}; the YAML's rules and quotas apply",
        aside.display()
    );
    Ok(())
}
