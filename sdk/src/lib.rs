//! # weir-sdk
//!
//! Everything needed to write a Weir plugin in Rust against plugin ABI v1 (see `ABI.md` beside this crate):
//!
//! * [`Event`] and [`Verdict`], the data a plugin sees and decides on, and [`Fields`], the parts of it asked for;
//! * the [`Plugin`] trait a plugin implements;
//! * [`export_plugin!`], which generates the wasm exports (`weir_abi_version`, `weir_alloc`, `weir_free`,
//!   `weir_init`, `weir_process`) for a `Plugin` type;
//! * the host calls [`log`], [`now_ms`] and [`counter_add`] (imports from module `weir` on wasm32, std
//!   fallbacks natively so that plugins can be unit tested with a plain `cargo test`);
//! * [`testing`], helpers that drive a plugin natively through the same MessagePack encoding the host uses.
//!
//! ```ignore
//! use weir_sdk::{Event, Plugin, Verdict};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { drop_debug: bool }
//!
//! struct DropDebug(Config);
//!
//! impl Plugin for DropDebug {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> { Ok(DropDebug(config)) }
//!     fn process(&mut self, event: &mut Event) -> Verdict {
//!         if self.0.drop_debug && event.status.as_deref() == Some("debug") { Verdict::Drop } else { Verdict::Keep }
//!     }
//! }
//!
//! weir_sdk::export_plugin!(DropDebug);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use serde;
pub use serde_json;

/// The plugin ABI version this SDK implements (returned by the `weir_abi_version` export).
pub const ABI_VERSION: i32 = 1;

/// One log event, as in ABI.md's MessagePack schema (field names are the wire names).
///
/// Attribute values are `serde_json::Value`s: MessagePack maps, arrays, integers, floats, strings, booleans and
/// nil all round-trip through them (MessagePack binary and extension values are not part of the schema).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// `"key:value"` or bare `"value"`.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl Event {
    /// An event with just a message (timestamp 0, everything else empty).
    pub fn with_message(message: impl Into<String>) -> Self {
        Event {
            message: message.into(),
            ..Event::default()
        }
    }
}

/// The event fields a plugin sees and may change ([`Plugin::FIELDS`], the `weir_fields` export).
///
/// The host sends only these: the others arrive empty (their `Default`) and whatever the plugin writes into
/// them is ignored, the event keeps its own. Asking for less makes every batch cheaper to send and decode; a
/// plugin that only reads the message asks for [`Fields::MESSAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fields(u32);

impl Fields {
    pub const NONE: Fields = Fields(0);
    pub const TIMESTAMP: Fields = Fields(1);
    pub const MESSAGE: Fields = Fields(2);
    pub const HOST: Fields = Fields(4);
    pub const SERVICE: Fields = Fields(8);
    pub const SOURCE: Fields = Fields(16);
    pub const STATUS: Fields = Fields(32);
    pub const TAGS: Fields = Fields(64);
    pub const ATTRIBUTES: Fields = Fields(128);
    pub const ALL: Fields = Fields(255);

    /// Both sets: `Fields::MESSAGE.with(Fields::ATTRIBUTES)` (usable in a `const`).
    pub const fn with(self, other: Fields) -> Fields {
        Fields(self.0 | other.0)
    }

    /// The bits, as the `weir_fields` export returns them.
    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: Fields) -> bool {
        self.0 & other.0 == other.0
    }

    /// The event as the host sends it to a plugin asking for these fields: the others empty.
    pub fn mask(self, e: &Event) -> Event {
        let keep = |f: Fields| self.contains(f);
        Event {
            timestamp: if keep(Fields::TIMESTAMP) {
                e.timestamp
            } else {
                0
            },
            message: if keep(Fields::MESSAGE) {
                e.message.clone()
            } else {
                String::new()
            },
            host: e.host.clone().filter(|_| keep(Fields::HOST)),
            service: e.service.clone().filter(|_| keep(Fields::SERVICE)),
            source: e.source.clone().filter(|_| keep(Fields::SOURCE)),
            status: e.status.clone().filter(|_| keep(Fields::STATUS)),
            tags: if keep(Fields::TAGS) {
                e.tags.clone()
            } else {
                Vec::new()
            },
            attributes: if keep(Fields::ATTRIBUTES) {
                e.attributes.clone()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// The event as the host takes a plugin's changed event back: these fields from `changed`, the others
    /// from `original`.
    pub fn merge(self, original: &Event, changed: Event) -> Event {
        let keep = |f: Fields| self.contains(f);
        let mut e = original.clone();
        if keep(Fields::TIMESTAMP) {
            e.timestamp = changed.timestamp;
        }
        if keep(Fields::MESSAGE) {
            e.message = changed.message;
        }
        if keep(Fields::HOST) {
            e.host = changed.host;
        }
        if keep(Fields::SERVICE) {
            e.service = changed.service;
        }
        if keep(Fields::SOURCE) {
            e.source = changed.source;
        }
        if keep(Fields::STATUS) {
            e.status = changed.status;
        }
        if keep(Fields::TAGS) {
            e.tags = changed.tags;
        }
        if keep(Fields::ATTRIBUTES) {
            e.attributes = changed.attributes;
        }
        e
    }
}

/// What happens to an event after the plugin has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Forward the (possibly modified) event.
    Keep,
    /// Drop it everywhere.
    Drop,
    /// Do not forward it, but keep it in the archive.
    ArchiveOnly,
}

impl Verdict {
    /// The wire name (`"keep"`, `"drop"`, `"archive_only"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::Drop => "drop",
            Verdict::ArchiveOnly => "archive_only",
        }
    }
}

// Written by hand (not derived) so the wire form is a plain MessagePack string whatever the serializer's enum
// representation is.
impl Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Verdict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Verdict;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"keep\", \"drop\" or \"archive_only\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Verdict, E> {
                match v {
                    "keep" => Ok(Verdict::Keep),
                    "drop" => Ok(Verdict::Drop),
                    "archive_only" => Ok(Verdict::ArchiveOnly),
                    other => Err(E::unknown_variant(other, &["keep", "drop", "archive_only"])),
                }
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Verdict, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => self.visit_str(s),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(v), &self)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// The trait a plugin implements. One instance lives per wasm instance; the host calls it with batches.
pub trait Plugin: Sized {
    /// The plugin's `config:` from the proxy's YAML. Without one (nil), the config is what the type makes of nil
    /// (`()`, `Option`), else of an empty map: a struct's `#[serde(default)]` fields take their defaults and a
    /// required field is reported missing (``invalid plugin config: missing field `team` ``).
    type Config: serde::de::DeserializeOwned;

    /// Set to `false` for a plugin that never modifies events: the SDK then skips the copy-and-compare it does to
    /// tell modified events from unchanged ones, and always answers "unchanged" (changes made anyway are lost).
    const MODIFIES_EVENTS: bool = true;

    /// The fields the host sends and takes back (see [`Fields`]); all of them unless narrowed.
    const FIELDS: Fields = Fields::ALL;

    /// Builds the plugin from its config; an `Err` makes the proxy refuse to load the plugin.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Decides on one event, possibly modifying it (modifications only matter with [`Verdict::Keep`]).
    fn process(&mut self, event: &mut Event) -> Verdict;

    /// Batch form; the default calls [`Plugin::process`] per event. Must return exactly one verdict per event.
    fn process_batch(&mut self, events: &mut [Event]) -> Vec<Verdict> {
        events.iter_mut().map(|e| self.process(e)).collect()
    }

    /// What the SDK calls: per event, its verdict and whether the event was modified (only modified events go back
    /// to the host). The default runs [`Plugin::process_batch`] on the batch and finds the modified events by
    /// comparing with a copy taken before. A plugin that knows what it changed may override this to skip the copy,
    /// which is most of the cost of a cheap plugin; a modification it fails to report is lost.
    fn process_batch_tracked(&mut self, events: &mut [Event]) -> Vec<(Verdict, bool)> {
        if !Self::MODIFIES_EVENTS {
            return self
                .process_batch(events)
                .into_iter()
                .map(|v| (v, false))
                .collect();
        }
        let originals = events.to_vec();
        let verdicts = self.process_batch(events);
        verdicts
            .into_iter()
            .enumerate()
            .map(|(i, v)| (v, originals.get(i) != events.get(i)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------------------------

/// `{ "events": [Event, ...] }`, what `weir_process` receives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Batch {
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One entry of a [`BatchResult`]: `event: None` (nil) keeps the input event unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventResult {
    pub verdict: Verdict,
    #[serde(default)]
    pub event: Option<Event>,
}

/// `{ "results": [Result, ...] }`, what `weir_process` returns.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchResult {
    #[serde(default)]
    pub results: Vec<EventResult>,
}

#[derive(Serialize)]
struct EventResultRef<'a> {
    verdict: Verdict,
    event: Option<&'a Event>,
}

#[derive(Serialize)]
struct BatchResultRef<'a> {
    results: Vec<EventResultRef<'a>>,
}

/// Encodes a value as the ABI does (MessagePack, structs as maps with string keys).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| e.to_string())
}

/// Decodes a MessagePack value.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

/// Packs a returned buffer as the ABI's `i64`: `(ptr << 32) | len`, both unsigned 32-bit.
pub const fn pack(ptr: u32, len: u32) -> i64 {
    (((ptr as u64) << 32) | (len as u64)) as i64
}

/// The inverse of [`pack`]: `(ptr, len)`.
pub const fn unpack(packed: i64) -> (u32, u32) {
    let v = packed as u64;
    ((v >> 32) as u32, v as u32)
}

// ---------------------------------------------------------------------------------------------------------------
// The logic behind the exports, generic over the plugin so it can be tested natively.
// ---------------------------------------------------------------------------------------------------------------

/// Runs `weir_init`'s logic on the config bytes. An empty buffer or MessagePack nil (no `config:`) is decoded
/// as nil, and when the type refuses nil, as an empty map (see [`Plugin::Config`]).
pub fn init_plugin<P: Plugin>(config: &[u8]) -> Result<P, String> {
    let cfg = if config.is_empty() || config == [0xc0] {
        decode_config::<P::Config>(&[0xc0]).or_else(|_| decode_config::<P::Config>(&[0x80]))?
    } else {
        decode_config::<P::Config>(config)?
    };
    P::new(cfg)
}

/// Decodes a plugin config; the error names the field it is about: ``invalid plugin config at `limits.max`:
/// invalid value: ...`` (serde's own message names the key for unknown and missing fields). The proxy reads that
/// path to point at the YAML line.
pub fn decode_config<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." {
            format!("invalid plugin config: {}", e.into_inner())
        } else {
            format!("invalid plugin config at `{path}`: {}", e.into_inner())
        }
    })
}

/// Runs `weir_process`'s logic on one encoded batch and returns the encoded result.
///
/// A batch that does not decode is logged and answered with an empty `results` array, which the host treats as
/// a failed batch (its `on_error` policy applies) without trapping the instance.
pub fn process_encoded<P: Plugin>(plugin: &mut P, input: &[u8]) -> Vec<u8> {
    let batch: Batch = match decode(input) {
        Ok(b) => b,
        Err(e) => {
            log(Level::Error, &format!("weir-sdk: cannot decode batch: {e}"));
            return encode(&BatchResultRef {
                results: Vec::new(),
            })
            .unwrap_or_default();
        }
    };
    let mut events = batch.events;
    let verdicts = plugin.process_batch_tracked(&mut events);
    if verdicts.len() != events.len() {
        log(
            Level::Error,
            &format!(
                "weir-sdk: the plugin returned {} verdicts for {} events (process_batch or process_batch_tracked)",
                verdicts.len(),
                events.len()
            ),
        );
    }
    let results = verdicts
        .iter()
        .enumerate()
        .map(|(i, &(verdict, modified))| {
            let event = events
                .get(i)
                .filter(|_| modified && verdict == Verdict::Keep);
            EventResultRef { verdict, event }
        })
        .collect();
    match encode(&BatchResultRef { results }) {
        Ok(v) => v,
        Err(e) => {
            log(
                Level::Error,
                &format!("weir-sdk: cannot encode results: {e}"),
            );
            encode(&BatchResultRef {
                results: Vec::new(),
            })
            .unwrap_or_default()
        }
    }
}

/// The plugin instance of this wasm instance (wasm is single-threaded; natively, one per thread).
///
/// Used by [`export_plugin!`]; not meant to be used directly.
pub struct Slot<P>(RefCell<Option<P>>);

impl<P> Slot<P> {
    #[doc(hidden)]
    pub const fn new() -> Self {
        Slot(RefCell::new(None))
    }
}

impl<P> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

#[doc(hidden)]
pub mod __export {
    //! The bodies of the generated exports. Pointers are `usize` here; the macro converts at the boundary.
    use super::*;
    use std::alloc::{alloc, dealloc, Layout};

    pub fn abi_version() -> i32 {
        ABI_VERSION
    }

    /// Allocates `len` bytes (alignment 1). Returns null when out of memory; `len == 0` returns a dangling,
    /// non-null pointer that `free` ignores.
    pub fn alloc_buf(len: usize) -> *mut u8 {
        if len == 0 {
            return std::ptr::NonNull::<u8>::dangling().as_ptr();
        }
        match Layout::from_size_align(len, 1) {
            Ok(layout) => unsafe { alloc(layout) },
            Err(_) => std::ptr::null_mut(),
        }
    }

    /// Frees a buffer from [`alloc_buf`] or [`leak`].
    ///
    /// # Safety
    /// `ptr`/`len` must describe a live buffer from `alloc_buf(len)` or `leak`, freed once.
    pub unsafe fn free_buf(ptr: *mut u8, len: usize) {
        if ptr.is_null() || len == 0 {
            return;
        }
        dealloc(ptr, Layout::from_size_align_unchecked(len, 1));
    }

    /// Hands a buffer to the host: `(ptr, len)`, or `(null, 0)` for an empty one. Freed by `free_buf(ptr, len)`.
    pub fn leak(bytes: Vec<u8>) -> (*mut u8, usize) {
        if bytes.is_empty() {
            return (std::ptr::null_mut(), 0);
        }
        let boxed: Box<[u8]> = bytes.into_boxed_slice(); // exact size, alignment 1: matches free_buf's layout
        let len = boxed.len();
        (Box::into_raw(boxed) as *mut u8, len)
    }

    /// Takes ownership of an input buffer the host wrote into `alloc_buf(len)`.
    ///
    /// # Safety
    /// `ptr`/`len` must come from `alloc_buf(len)` and not be used again by anyone else.
    pub unsafe fn take_input(ptr: *mut u8, len: usize) -> InputBuf {
        InputBuf { ptr, len }
    }

    /// An input buffer owned by the guest, freed on drop.
    pub struct InputBuf {
        ptr: *mut u8,
        len: usize,
    }

    impl InputBuf {
        pub fn as_slice(&self) -> &[u8] {
            if self.ptr.is_null() || self.len == 0 {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
            }
        }
    }

    impl Drop for InputBuf {
        fn drop(&mut self) {
            unsafe { free_buf(self.ptr, self.len) }
        }
    }

    /// `weir_init`: `(null, 0)` on success, else a UTF-8 error message.
    pub fn init<P: Plugin>(slot: &Slot<P>, input: &[u8]) -> (*mut u8, usize) {
        match init_plugin::<P>(input) {
            Ok(p) => {
                *slot.0.borrow_mut() = Some(p);
                (std::ptr::null_mut(), 0)
            }
            Err(e) => {
                let msg = if e.is_empty() {
                    "plugin init failed".to_string()
                } else {
                    e
                };
                leak(msg.into_bytes())
            }
        }
    }

    /// `weir_process`: the encoded result. Before a successful `weir_init`, the plugin is built as from no
    /// config (an error there is logged and answered with an empty, hence failed, result).
    pub fn process<P: Plugin>(slot: &Slot<P>, input: &[u8]) -> (*mut u8, usize) {
        let mut guard = slot.0.borrow_mut();
        if guard.is_none() {
            match init_plugin::<P>(&[]) {
                Ok(p) => *guard = Some(p),
                Err(e) => {
                    log(
                        Level::Error,
                        &format!("weir-sdk: weir_process before weir_init, default config: {e}"),
                    );
                    return leak(
                        encode(&BatchResultRef {
                            results: Vec::new(),
                        })
                        .unwrap_or_default(),
                    );
                }
            }
        }
        let plugin = guard.as_mut().expect("plugin initialised above");
        leak(process_encoded(plugin, input))
    }

    /// Packs `(ptr, len)` for the host. Only meaningful on wasm32, where pointers are 32-bit.
    pub fn pack_buf((ptr, len): (*mut u8, usize)) -> i64 {
        if len == 0 {
            return 0;
        }
        pack(ptr as usize as u32, len as u32)
    }
}

/// Generates the ABI v1 exports for a type implementing [`Plugin`]:
///
/// ```text
/// weir_abi_version() -> i32
/// weir_fields() -> i32
/// weir_alloc(len: i32) -> i32
/// weir_free(ptr: i32, len: i32)
/// weir_init(ptr: i32, len: i32) -> i64
/// weir_process(ptr: i32, len: i32) -> i64
/// ```
///
/// Use it once per crate, at the top level: `weir_sdk::export_plugin!(MyPlugin);`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub mod __weir_plugin_exports {
            use super::*;

            ::std::thread_local! {
                static SLOT: $crate::Slot<$plugin> = const { $crate::Slot::new() };
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_abi_version() -> i32 {
                $crate::__export::abi_version()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_fields() -> i32 {
                <$plugin as $crate::Plugin>::FIELDS.bits() as i32
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_alloc(len: usize) -> *mut u8 {
                $crate::__export::alloc_buf(len)
            }

            /// # Safety
            /// `ptr`/`len` must be a buffer this module handed out and not yet freed.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn weir_free(ptr: *mut u8, len: usize) {
                unsafe { $crate::__export::free_buf(ptr, len) }
            }

            /// # Safety
            /// `ptr`/`len` must come from `weir_alloc(len)`; the buffer now belongs to the guest.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn weir_init(ptr: *mut u8, len: usize) -> i64 {
                let input = unsafe { $crate::__export::take_input(ptr, len) };
                let out =
                    SLOT.with(|slot| $crate::__export::init::<$plugin>(slot, input.as_slice()));
                drop(input);
                $crate::__export::pack_buf(out)
            }

            /// # Safety
            /// `ptr`/`len` must come from `weir_alloc(len)`; the buffer now belongs to the guest.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn weir_process(ptr: *mut u8, len: usize) -> i64 {
                let input = unsafe { $crate::__export::take_input(ptr, len) };
                let out =
                    SLOT.with(|slot| $crate::__export::process::<$plugin>(slot, input.as_slice()));
                drop(input);
                $crate::__export::pack_buf(out)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Host calls
// ---------------------------------------------------------------------------------------------------------------

/// Log levels of the `log` host call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        pub fn log(level: i32, ptr: *const u8, len: usize);
        pub fn now_ms() -> i64;
        pub fn counter_add(name_ptr: *const u8, name_len: usize, delta: i64);
    }
}

/// Writes a message to the proxy's log (rate limited by the host). Natively: to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        host::log(level as i32, message.as_ptr(), message.len())
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        eprintln!("[weir plugin {level:?}] {message}");
    }
}

/// Wall-clock time in ms since the Unix epoch (the host's clock; natively, the system clock).
pub fn now_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        host::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Adds `delta` to the proxy's `weir_plugin_custom_total{tenant, plugin, name}`. Natively: recorded per thread, see
/// [`testing::counters`].
pub fn counter_add(name: &str, delta: i64) {
    #[cfg(target_arch = "wasm32")]
    unsafe {
        host::counter_add(name.as_ptr(), name.len(), delta)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        testing::COUNTERS.with(|c| *c.borrow_mut().entry(name.to_string()).or_insert(0) += delta);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Native test helpers
// ---------------------------------------------------------------------------------------------------------------

/// Helpers for testing plugins natively through the real encoding (what the host sends and reads back).
pub mod testing {
    use super::*;

    #[cfg(not(target_arch = "wasm32"))]
    thread_local! {
        pub(crate) static COUNTERS: RefCell<BTreeMap<String, i64>> = const { RefCell::new(BTreeMap::new()) };
    }

    /// The counters added on this thread so far (native only; empty on wasm32).
    pub fn counters() -> BTreeMap<String, i64> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            COUNTERS.with(|c| c.borrow().clone())
        }
        #[cfg(target_arch = "wasm32")]
        {
            BTreeMap::new()
        }
    }

    /// Builds a plugin from a config written as JSON (`serde_json::Value::Null` for "no config"), encoding it as
    /// MessagePack first, exactly like the host does with the YAML config.
    pub fn init<P: Plugin>(config: serde_json::Value) -> Result<P, String> {
        let bytes = encode(&config)?;
        init_plugin::<P>(&bytes)
    }

    /// Sends one batch through the plugin as the host would (only the fields in [`Plugin::FIELDS`]) and returns
    /// the decoded result.
    pub fn run_raw<P: Plugin>(plugin: &mut P, events: &[Event]) -> BatchResult {
        let input = encode(&Batch {
            events: events.iter().map(|e| P::FIELDS.mask(e)).collect(),
        })
        .expect("encode batch");
        let output = process_encoded(plugin, &input);
        decode(&output).expect("decode result")
    }

    /// Like [`run_raw`], but resolves each result as the host does: "unchanged" (nil) is the input event, a
    /// changed event takes only the fields in [`Plugin::FIELDS`]. One `(verdict, event)` per event.
    pub fn run<P: Plugin>(plugin: &mut P, events: &[Event]) -> Vec<(Verdict, Event)> {
        let result = run_raw(plugin, events);
        assert_eq!(result.results.len(), events.len(), "one result per event");
        result
            .results
            .into_iter()
            .zip(events)
            .map(|(r, orig)| {
                let event = match r.event {
                    Some(changed) => P::FIELDS.merge(orig, changed),
                    None => orig.clone(),
                };
                (r.verdict, event)
            })
            .collect()
    }

    /// Runs a single event through the plugin.
    pub fn run_one<P: Plugin>(plugin: &mut P, event: Event) -> (Verdict, Event) {
        run(plugin, std::slice::from_ref(&event))
            .pop()
            .expect("one result")
    }
}

#[cfg(test)]
mod tests;
