//! The `weir` binary: the command line (clap) and its dispatch to one file per
//! subcommand under cli/ (run, check, query, backends, plugin test). The proxy
//! itself is the `weir` library (lib.rs: `weir::run` and one folder per stage
//! of the data flow); this file also sets the allocator (jemalloc).
use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cli;

// Events are many small allocations (strings, maps), made on intake threads
// and freed on delivery's. jemalloc keeps that churn's memory bounded: with
// mimalloc, peak RSS in the same benchmarks was 1.5 to 2.7 times higher at the
// same throughput (per-thread heaps holding what other threads freed).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: a background thread gives unused
/// pages back to the system after a second (not the default ten), so peak
/// RSS follows what is held, not what was.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"
        .as_ptr()
        .cast(),
);

/// A C string pointer jemalloc reads once; never written.
#[repr(transparent)]
struct MallocConf(*const u8);
// SAFETY: it points to a static, immutable byte string.
unsafe impl Sync for MallocConf {}

/// Weir: an edge ingestion proxy for logs.
#[derive(Parser)]
#[command(name = "weir", version = cli::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Each subcommand's arguments and body live in their own file under `cli/`.
#[derive(Subcommand)]
enum Command {
    /// Runs the proxy.
    Run(cli::run::Args),
    /// Validates a config and exits: 0 when valid, 1 with the error otherwise.
    Check(cli::check::Args),
    /// Tries a search query (exclusion-rule syntax) on sample logs: prints the matching events as NDJSON.
    Query(cli::query::Args),
    /// Shows each backend's state (up, ejected, down), last error, last change and failovers,
    /// from a running proxy's admin listener (`GET /backends`).
    Backends(cli::backends::Args),
    /// Shows a tenant's processed events as they pass, each with its fate (indexed, excluded by
    /// which rule, sampled, over quota, dropped by which plugin), from a running proxy's live tail.
    Tail(cli::tail::Args),
    /// Shows a tenant's top log patterns by volume, each with an exclusion-rule query that matches
    /// it and what excluding it would save per day, from a running proxy (`GET /admin/patterns`).
    Patterns(cli::patterns::Args),
    /// Replays a tenant's archived events (time range, query) into its route or one of its
    /// backends, through a running proxy (`/admin/rehydrations`): progress on stderr, Ctrl-C
    /// cancels at a chunk boundary, the same command resumes; exit 0 only once done.
    Rehydrate(cli::rehydrate::Args),
    /// WebAssembly plugins (ABI v1, sdk/ABI.md).
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Runs a plugin on sample events without a proxy: prints one NDJSON line per
    /// event, `{"verdict": "keep"|"drop"|"archive_only", "event": {...}}`, on stdout,
    /// and timings on stderr. Exits 1 if the plugin fails to load or fails the batch.
    Test(cli::plugin_test::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => cli::run::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Query(args) => cli::query::run(args),
        Command::Backends(args) => cli::backends::run(args),
        Command::Tail(args) => cli::tail::run(args),
        Command::Patterns(args) => cli::patterns::run(args),
        Command::Rehydrate(args) => cli::rehydrate::run(args),
        Command::Plugin {
            command: PluginCommand::Test(args),
        } => cli::plugin_test::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
