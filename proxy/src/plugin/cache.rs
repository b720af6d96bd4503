//! The compiled-module cache: `data_dir/plugin-cache/<key>.cwasm`, where the
//! key is the SHA-256 of the plugin's bytes, the wasmtime version and the
//! engine's configuration (wasmtime's `precompile_compatibility_hash`, which
//! covers both). A cache hit skips Cranelift entirely, which is most of a
//! plugin's load time (at start and at every hot reload).
//!
//! # Why deserializing is sound here
//!
//! `Module::deserialize` is `unsafe` because a `.cwasm` file is native code
//! that wasmtime maps and runs without verifying it: a crafted or damaged file
//! means arbitrary behaviour. We only ever deserialize files this proxy wrote
//! itself, in its own data directory (which the operator already trusts with
//! its state), and we check them first:
//!
//! - each `.cwasm` is written to a temporary file and renamed into place, then
//!   a `.sha256` file holding the SHA-256 of the `.cwasm` bytes is written the
//!   same way, so a crash never leaves a half-written file under the final name;
//! - on load, the `.cwasm` is read into memory once, its SHA-256 compared with
//!   the `.sha256` file, and only those same in-memory bytes are deserialized
//!   (no check-then-map race with the file changing underneath);
//! - wasmtime itself also refuses a file built by another version or with an
//!   incompatible engine configuration.
//!
//! Anything that does not check out (missing checksum, mismatch, wasmtime
//! refusing it) is ignored: the module is compiled from source and the cache
//! entry rewritten.
use super::{engine, LoadError};
use crate::durable::write_atomic;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Module;

/// Compiles plugin modules, through the on-disk cache when it has a directory.
#[derive(Default)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Feeds a `Hash` into SHA-256 (stable across runs, unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key for `bytes` on this engine.
pub fn cache_key(bytes: &[u8]) -> String {
    use std::hash::Hash;
    let mut h = ShaHasher(Sha256::new());
    h.0.update(b"weir-plugin-cache-v1\0");
    h.0.update((bytes.len() as u64).to_le_bytes());
    h.0.update(bytes);
    // The wasmtime version (module_version) and every engine setting that affects the code.
    engine().precompile_compatibility_hash().hash(&mut h);
    hex(&h.0.finalize())
}

/// Compiles without a cache (binary wasm or wat text).
pub fn compile(bytes: &[u8]) -> Result<Module, LoadError> {
    Module::new(engine(), bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
}

impl ModuleCache {
    /// A cache under `dir` (created on first write), or none (always compile).
    pub fn new(dir: Option<PathBuf>) -> ModuleCache {
        ModuleCache {
            dir,
            ..Default::default()
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Modules loaded from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Modules compiled (no usable cache entry).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// The module for `bytes`: from the cache when a verified entry exists, else compiled (and cached).
    pub fn module(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        let Some(dir) = &self.dir else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return compile(bytes);
        };
        let key = cache_key(bytes);
        let cwasm = format!("{key}.cwasm");
        let sum = format!("{key}.sha256");
        match load_verified(&dir.join(&cwasm), &dir.join(&sum)) {
            Ok(m) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(file = %dir.join(&cwasm).display(), "plugin module loaded from the compile cache");
                return Ok(m);
            }
            Err(Some(why)) => {
                tracing::warn!(file = %dir.join(&cwasm).display(), "ignoring a plugin cache entry ({why}); recompiling")
            }
            Err(None) => {}
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let module = compile(bytes)?;
        let stored = module
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|code| {
                // The code first, then its checksum: an entry is only used once both are in place and agree.
                write_atomic(dir, &cwasm, &code).map_err(|e| e.to_string())?;
                write_atomic(dir, &sum, hex(&Sha256::digest(&code)).as_bytes())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = stored {
            tracing::warn!(dir = %dir.display(), "cannot write the plugin compile cache: {e}");
        }
        Ok(module)
    }
}

/// A cache entry, if both files exist and the checksum matches. `Err(None)`: no entry; `Err(Some(why))`: a bad one.
fn load_verified(cwasm: &Path, sum: &Path) -> Result<Module, Option<String>> {
    let code = match std::fs::read(cwasm) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(format!("cannot read it: {e}"))),
    };
    let expected = std::fs::read_to_string(sum).map_err(|e| Some(format!("no checksum: {e}")))?;
    if expected.trim() != hex(&Sha256::digest(&code)) {
        return Err(Some("checksum mismatch".into()));
    }
    // SAFETY: see the module documentation: these bytes are a file this proxy serialized
    // itself into its own data directory, verified against the checksum written with it,
    // and deserialized from this in-memory copy (not re-read from disk).
    unsafe { Module::deserialize(engine(), &code) }
        .map_err(|e| Some(format!("wasmtime refused it: {e:#}")))
}
