//! Why a plugin could not load (refused at start, by `weir check`, or on a hot
//! reload) and why one call failed (the batch then takes `on_error`). The
//! texts are what operators read in logs and in `weir check`.
use super::located::INIT_REFUSED;
use crate::telemetry::labels::PluginErrorReason;
use wasmtime::Trap;

/// A plugin version that cannot run: nothing of it is used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is neither wasm nor wat: {error}")]
    NotWasm { path: String, error: String },
    #[error("{path} is not a valid module: {error}")]
    Invalid { path: String, error: String },
    #[error("cannot compile: {0}")]
    Compile(String),
    #[error("linking: {0}")]
    Linker(String),
    #[error("cannot link (only `weir` and `wasi_snapshot_preview1` imports are provided): {0}")]
    Link(String),
    /// An import plugins are not given (a file, a socket, a wait).
    #[error("the plugin imports {import}, which Weir does not give plugins: {why}")]
    ForbiddenImport { import: String, why: &'static str },
    #[error("cannot instantiate: {0}")]
    Instantiate(CallError),
    #[error("the module exports no `memory`")]
    NoMemory,
    #[error("the module does not export `{0}` (ABI v1, sdk/ABI.md)")]
    MissingExport(&'static str),
    #[error("export `{export}` has the wrong signature: {error}")]
    Signature { export: &'static str, error: String },
    /// A call made while loading (`weir_abi_version`, `weir_fields`) failed.
    #[error("{export}: {error}")]
    Call {
        export: &'static str,
        error: CallError,
    },
    #[error("the plugin speaks ABI version {0}; this Weir supports version 1 only")]
    AbiVersion(i32),
    #[error("weir_init failed: {0}")]
    InitFailed(CallError),
    /// `weir_init` answered with an error message: the plugin's own words.
    #[error("{INIT_REFUSED}{0}")]
    InitRefused(String),
    #[error("config cannot be encoded as MessagePack: {0}")]
    Config(String),
}

/// What a plugin's call failed on; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the call ran past its deadline")]
    Timeout,
    #[error("memory limit: {0}")]
    Memory(String),
    #[error("trap: {0}")]
    Trap(String),
    #[error("bad result: {0}")]
    BadResult(String),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

impl CallError {
    pub fn reason(&self) -> PluginErrorReason {
        match self {
            CallError::Timeout => PluginErrorReason::Timeout,
            CallError::Memory(_) => PluginErrorReason::Memory,
            CallError::Trap(_) => PluginErrorReason::Trap,
            CallError::BadResult(_) => PluginErrorReason::BadResult,
            CallError::Instantiate(_) => PluginErrorReason::Instantiate,
        }
    }

    pub(super) fn from_wasm(e: wasmtime::Error) -> CallError {
        let text = format!("{e:#}");
        if text.contains("forcing trap when growing memory") {
            return CallError::Memory(text);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout,
            _ => CallError::Trap(text),
        }
    }
}
