//! The object stores archives write to, each opened once and shared by every
//! archive naming it, with its health; and disaster recovery between the
//! stores of one archive ([`StoreSet`]).
//!
//! An object goes to the first store of the archive's list that is up. A store
//! is down after `failover.after_failures` failed writes in a row (from any
//! archive): the object that saw it go down, and the next ones, go to the next
//! store. After `failover.retry_after`, one object tries the down store again
//! (one attempt, claimed so that only one writer makes it); on success the
//! store is up and objects return to it. While every store is down, each is
//! tried at every retry of the writer's back-off (there is nowhere else to go),
//! so a lone store is written as soon as it is back. Every object keeps its name and layout
//! whichever store takes it, so a listing across the stores finds each hour's
//! objects (rehydration reads them that way).
use crate::config::{NamedStore, StoreConfig, StoreFailover};
use crate::telemetry::archive::ARCHIVE;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One store, opened, with its health.
pub struct ArchiveStore {
    /// The name in `archive_stores`, or the URL of an archive's inline `store`.
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
    config: StoreConfig,
    down: AtomicBool,
    failures_in_a_row: AtomicU32,
    /// While down: when an object may try it again (`clock_ms`).
    next_try_ms: AtomicI64,
    failovers: AtomicU64,
    objects: AtomicU64,
    bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Objects being written to it: their id and oldest event (ms).
    waiting: Mutex<HashMap<u64, i64>>,
    /// Objects another store took after a write here failed: deleted here once
    /// it takes writes again (a failed write may have landed).
    orphans: Mutex<Vec<(ObjectPath, u32)>>,
}

/// Deletes tried per orphan before it is given up (and logged).
const ORPHAN_TRIES: u32 = 5;

/// The most orphans a store remembers (paths, a few MiB at most); past it the
/// oldest are forgotten, and may stay as a second copy.
const MAX_ORPHANS: usize = 10_000;

/// Wall-clock ms: event times, to age the oldest unwritten event.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Monotonic ms since the first call: retry times, which a step of the wall
/// clock (NTP, a VM resumed) must not stretch or shorten.
fn clock_ms() -> i64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

impl ArchiveStore {
    pub(crate) fn new(
        name: &str,
        config: &StoreConfig,
        store: Arc<dyn ObjectStore>,
    ) -> ArchiveStore {
        ArchiveStore {
            name: name.to_string(),
            store,
            config: config.clone(),
            down: AtomicBool::new(false),
            failures_in_a_row: AtomicU32::new(0),
            next_try_ms: AtomicI64::new(0),
            failovers: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_error: Mutex::new(None),
            waiting: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
        }
    }

    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    /// Whether an object may try it now: up, or down with its retry due and
    /// claimed by this caller (so one object makes the attempt).
    fn claim(&self, retry_after: Duration) -> bool {
        if self.is_up() {
            return true;
        }
        let now = clock_ms();
        let due = self.next_try_ms.load(Ordering::SeqCst);
        now >= due
            && self
                .next_try_ms
                .compare_exchange(
                    due,
                    now + retry_after.as_millis() as i64,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
    }

    fn orphan(&self, path: ObjectPath) {
        let mut o = self.orphans.lock().unwrap();
        if o.len() >= MAX_ORPHANS {
            tracing::warn!(store = %self.name, "too many objects to check for a second copy in this store; forgetting the oldest");
            o.remove(0);
        }
        o.push((path, 0));
    }

    /// Deletes the copies failed writes may have left, now that the store takes writes.
    fn clean_orphans(self: &Arc<Self>) {
        let paths = std::mem::take(&mut *self.orphans.lock().unwrap());
        if paths.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut left = Vec::new();
            for (p, tries) in paths {
                match me.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        let error = me.mask(e.to_string());
                        let denied = matches!(
                            e,
                            object_store::Error::PermissionDenied { .. }
                                | object_store::Error::Unauthenticated { .. }
                        );
                        if denied || tries + 1 >= ORPHAN_TRIES {
                            tracing::warn!(store = %me.name, object = %p, error, "could not delete a copy a failed write may have left (the object is in another store); leaving it");
                        } else {
                            left.push((p, tries + 1));
                        }
                    }
                }
            }
            me.orphans.lock().unwrap().extend(left);
        });
    }

    /// It answered: up (again), failures forgotten.
    fn answered(&self) {
        self.failures_in_a_row.store(0, Ordering::SeqCst);
        if self.down.swap(false, Ordering::SeqCst) {
            tracing::warn!(store = %self.name, "archive store is back: objects return to it");
            *self.last_error.lock().unwrap() = None;
        }
    }

    fn succeeded(&self, bytes: usize) {
        self.answered();
        self.objects.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        ARCHIVE.objects.with_label_values(&[&self.name]).inc();
        ARCHIVE
            .bytes
            .with_label_values(&[&self.name])
            .inc_by(bytes as u64);
    }

    /// `msg` with every credential of the store masked (errors quote what the store answered).
    pub(crate) fn mask(&self, msg: String) -> String {
        self.config
            .secret_texts()
            .iter()
            .filter(|s| s.len() >= 8)
            .fold(msg, |m, s| m.replace(s.as_str(), "<redacted>"))
    }

    /// Counts a failed write; true when the store is (now) down.
    fn failed(&self, error: &str, f: &StoreFailover, next: Option<&str>) -> bool {
        ARCHIVE.errors.with_label_values(&[&self.name]).inc();
        *self.last_error.lock().unwrap() = Some(error.to_string());
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::SeqCst) + 1;
        let retry_at = clock_ms() + f.retry_after.0.as_millis() as i64;
        if self.down.load(Ordering::SeqCst) {
            // A failed retry: the next one is retry_after from its end, not its start.
            self.next_try_ms.store(retry_at, Ordering::SeqCst);
            return true;
        }
        if in_a_row < f.after_failures {
            return false;
        }
        // Set before the store shows down, so no claim sees an old retry time.
        self.next_try_ms.store(retry_at, Ordering::SeqCst);
        if !self.down.swap(true, Ordering::SeqCst) {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            ARCHIVE.failovers.with_label_values(&[&self.name]).inc();
            match next {
                Some(next) => {
                    tracing::error!(store = %self.name, failures = in_a_row, next = %next, retry_in = ?f.retry_after.0, error, "archive store is down: new objects go to the next store")
                }
                None => {
                    tracing::error!(store = %self.name, failures = in_a_row, retry_in = ?f.retry_after.0, error, "archive store is down, and no other store is up: objects wait in memory (or the disk buffer) and are retried")
                }
            }
        }
        true
    }

    /// Age of the oldest event in an object it has not taken yet (ms).
    fn oldest_unwritten_ms(&self, now: i64) -> Option<i64> {
        let w = self.waiting.lock().unwrap();
        w.values().min().map(|oldest| (now - oldest).max(0))
    }

    /// Its state, for `/readyz`: never a credential.
    pub fn report(&self) -> Value {
        json!({
            "name": self.name,
            "url": self.config.url(),
            "up": self.is_up(),
            "objects": self.objects.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "failovers": self.failovers.load(Ordering::Relaxed),
            "oldest_unwritten_age_ms": self.oldest_unwritten_ms(now_ms()),
            "last_error": *self.last_error.lock().unwrap(),
        })
    }
}

/// The stores opened so far, shared by archives that name the same store
/// (equal by name and config, credentials included: two archives that differ
/// only in their keys get two clients, each writing with its own).
#[derive(Default)]
pub struct Stores {
    open: Mutex<Vec<Arc<ArchiveStore>>>,
}

impl Stores {
    pub fn get_or_open(&self, named: &NamedStore) -> anyhow::Result<Arc<ArchiveStore>> {
        let mut open = self.open.lock().unwrap();
        if let Some(s) = open
            .iter()
            .find(|s| s.name == named.name && s.config == named.store)
        {
            return Ok(s.clone());
        }
        let store = super::store::open(&named.store)?;
        let s = Arc::new(ArchiveStore::new(&named.name, &named.store, store));
        // Every store's series from the start, at 0 (an alert on a rate needs a first sample).
        for c in [
            &ARCHIVE.objects,
            &ARCHIVE.bytes,
            &ARCHIVE.errors,
            &ARCHIVE.failovers,
        ] {
            c.with_label_values(&[&named.name]);
        }
        open.push(s.clone());
        Ok(s)
    }

    /// An archive's stores, in its order.
    pub fn set(
        &self,
        tenant: &str,
        stores: &[NamedStore],
        failover: StoreFailover,
    ) -> anyhow::Result<StoreSet> {
        let stores = stores
            .iter()
            .map(|s| self.get_or_open(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!stores.is_empty(), "an archive needs at least one store");
        Ok(StoreSet {
            tenant: tenant.to_string(),
            stores,
            failover,
        })
    }

    /// How many distinct stores are open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    /// Every store's state, for `/readyz`.
    pub fn report(&self) -> Value {
        Value::Array(
            self.open
                .lock()
                .unwrap()
                .iter()
                .map(|s| s.report())
                .collect(),
        )
    }

    /// Feeds the per-store gauges (`up`, oldest unwritten event) from these stores at each scrape.
    pub fn export_gauges(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        ARCHIVE.up.set_source(Box::new(move || {
            let Some(s) = me.upgrade() else { return vec![] };
            let open = s.open.lock().unwrap();
            open.iter()
                .map(|s| (vec![s.name.clone()], s.is_up() as i64))
                .collect()
        }));
        let me = Arc::downgrade(self);
        ARCHIVE.oldest_unwritten.set_source(Box::new(move || {
            let Some(s) = me.upgrade() else { return vec![] };
            let now = now_ms();
            let open = s.open.lock().unwrap();
            open.iter()
                .map(|s| {
                    let age = s.oldest_unwritten_ms(now).unwrap_or(0);
                    (vec![s.name.clone()], age / 1000)
                })
                .collect()
        }));
    }
}

/// One archive's stores, in order: where its objects go.
#[derive(Clone)]
pub struct StoreSet {
    /// Whose archive it is (logs, `weir_archive_errors_total`).
    tenant: String,
    stores: Vec<Arc<ArchiveStore>>,
    failover: StoreFailover,
}

/// Ids of objects being written, to find them in the stores' waiting lists.
static OBJECT_IDS: AtomicU64 = AtomicU64::new(0);

impl StoreSet {
    /// One store already open, with the default failover (tests, and callers
    /// that hold an object store of their own).
    #[cfg(test)]
    pub(crate) fn one(tenant: &str, store: Arc<dyn ObjectStore>) -> StoreSet {
        let cfg = StoreConfig::Local {
            root: "/nonexistent".into(),
        };
        StoreSet {
            tenant: tenant.to_string(),
            stores: vec![Arc::new(ArchiveStore::new("test", &cfg, store))],
            failover: StoreFailover::default(),
        }
    }

    /// Writes `body` at `path` in the first store that takes it, retrying for
    /// as long as it takes; `oldest_ms`: its oldest event, for the stores'
    /// oldest-unwritten figure. Returns the store that took it.
    pub async fn put(&self, path: &ObjectPath, body: Bytes, oldest_ms: i64) -> Arc<ArchiveStore> {
        let mut attempt = Attempt {
            id: OBJECT_IDS.fetch_add(1, Ordering::Relaxed),
            oldest_ms,
            waiting_on: None,
            failed_at: Vec::new(),
        };
        let mut backoff = Duration::from_millis(100);
        let taken_by = loop {
            match self.try_put(path, &body, Some(&mut attempt)).await {
                Ok(s) => break s,
                Err(e) => {
                    crate::telemetry::METRICS
                        .archive_errors
                        .with_label_values(&[&self.tenant])
                        .inc();
                    tracing::warn!(tenant = %self.tenant, object = %path, error = %e, retry_in = ?backoff, "archive write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        if let Some(s) = &attempt.waiting_on {
            s.waiting.lock().unwrap().remove(&attempt.id);
        }
        // A failed write may have landed all the same (the answer lost): that
        // store deletes its copy once it takes writes again, so the object is
        // in one store only. Never through a store at the same place as the
        // one that took it (two entries for one bucket): that would delete it.
        let taken_at = taken_by.config.url();
        for (s, _) in attempt.failed_at {
            if s.config.url() != taken_at {
                s.orphan(path.clone());
            }
        }
        taken_by
    }

    /// One pass over the stores in order: each that may be tried now is,
    /// moving on past a store that is down, or that failed this object
    /// `after_failures` times (another archive's writes keep it up, but it
    /// refuses this one). The error: the last failure, naming its store.
    /// `attempt`: an archive object's (none: one pass only, as for a dead letter).
    pub async fn try_put(
        &self,
        path: &ObjectPath,
        body: &Bytes,
        mut attempt: Option<&mut Attempt>,
    ) -> Result<Arc<ArchiveStore>, String> {
        let mut last = None;
        // With every store down and none due for its retry, each is tried
        // anyway: there is nowhere else to go, and the caller backs off.
        let none_usable = !self
            .stores
            .iter()
            .any(|s| s.is_up() || s.next_try_ms.load(Ordering::SeqCst) <= clock_ms());
        if let (true, Some(a)) = (none_usable, attempt.as_deref_mut()) {
            a.wait_on(&self.stores[0]);
        }
        for (i, s) in self.stores.iter().enumerate() {
            if !none_usable && !s.claim(self.failover.retry_after.0) {
                continue;
            }
            if let (false, Some(a)) = (none_usable, attempt.as_deref_mut()) {
                a.wait_on(s);
            }
            match s
                .store
                .put(path, PutPayload::from_bytes(body.clone()))
                .await
            {
                Ok(_) => {
                    s.succeeded(body.len());
                    s.clean_orphans();
                    self.probe_later_stores(i);
                    return Ok(s.clone());
                }
                Err(e) => {
                    let error = s.mask(e.to_string());
                    let next = self.stores[i + 1..]
                        .iter()
                        .find(|n| n.is_up())
                        .map(|n| n.name.as_str());
                    let down = s.failed(&error, &self.failover, next);
                    last = Some(format!("store {}: {error}", s.name));
                    let refused_here = attempt
                        .as_deref_mut()
                        .is_some_and(|a| a.failed(s) >= self.failover.after_failures);
                    if !down && !refused_here {
                        // Not down yet: the same store again, after a back-off.
                        break;
                    }
                }
            }
        }
        if let Some(a) = attempt.filter(|a| a.waiting_on.is_none()) {
            // Nothing was tried (another object holds the due retry): it waits on the first store.
            a.wait_on(&self.stores[0]);
        }
        Err(last.unwrap_or_else(|| "every archive store is down".into()))
    }

    /// Stores after `taken` that are down with their retry due: no object goes
    /// there while an earlier store is up, so each is looked at apart (a
    /// read of a name no object has: found or not found, it answers), and is up
    /// again once it does. Else a DR store that failed once would show down
    /// for as long as the first store is well.
    fn probe_later_stores(&self, taken: usize) {
        for s in &self.stores[taken + 1..] {
            if s.is_up() || !s.claim(self.failover.retry_after.0) {
                continue;
            }
            let (s, failover) = (s.clone(), self.failover);
            tokio::spawn(async move {
                let probe = ObjectPath::from(".weir-probe");
                match s.store.head(&probe).await {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => s.answered(),
                    Err(e) => {
                        s.failed(&s.mask(e.to_string()), &failover, None);
                    }
                }
            });
        }
    }
}

/// One archive object on its way to a store.
pub struct Attempt {
    id: u64,
    oldest_ms: i64,
    /// The store it counts as waiting for (its oldest-unwritten figure).
    waiting_on: Option<Arc<ArchiveStore>>,
    /// Stores a write of it failed at, and how often.
    failed_at: Vec<(Arc<ArchiveStore>, u32)>,
}

impl Attempt {
    fn wait_on(&mut self, s: &Arc<ArchiveStore>) {
        if let Some(prev) = self.waiting_on.replace(s.clone()) {
            prev.waiting.lock().unwrap().remove(&self.id);
        }
        s.waiting.lock().unwrap().insert(self.id, self.oldest_ms);
    }

    /// Counts a failed write of it at `s`; how many so far.
    fn failed(&mut self, s: &Arc<ArchiveStore>) -> u32 {
        match self.failed_at.iter_mut().find(|(f, _)| Arc::ptr_eq(f, s)) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.failed_at.push((s.clone(), 1));
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use async_trait::async_trait;
    use object_store::memory::InMemory;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, PutMultipartOptions,
        PutOptions, PutResult,
    };
    use std::sync::atomic::AtomicBool;

    /// An in-memory store that can be switched off (every call fails).
    #[derive(Debug, Default)]
    struct Switch {
        inner: InMemory,
        off: AtomicBool,
        /// Takes writes but answers each with an error (the answer lost).
        lose_answers: AtomicBool,
        /// Paths it refuses to take.
        refuse: Mutex<Vec<String>>,
    }

    impl std::fmt::Display for Switch {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Switch")
        }
    }

    impl Switch {
        fn check(&self) -> object_store::Result<()> {
            if self.off.load(Ordering::SeqCst) {
                return Err(object_store::Error::Generic {
                    store: "switch",
                    source: "switched off".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl ObjectStore for Switch {
        async fn put_opts(
            &self,
            location: &ObjectPath,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            self.check()?;
            if self.refuse.lock().unwrap().contains(&location.to_string()) {
                return Err(object_store::Error::PermissionDenied {
                    path: location.to_string(),
                    source: "refused by policy".into(),
                });
            }
            let r = self.inner.put_opts(location, payload, opts).await;
            if self.lose_answers.load(Ordering::SeqCst) {
                return Err(object_store::Error::Generic {
                    store: "switch",
                    source: "connection reset (the object was stored)".into(),
                });
            }
            r
        }
        async fn put_multipart_opts(
            &self,
            location: &ObjectPath,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.check()?;
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &ObjectPath,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.check()?;
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<ObjectPath>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectPath>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&ObjectPath>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &ObjectPath,
            to: &ObjectPath,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn set(stores: &[(&str, Arc<Switch>)], after: u32, retry_ms: u64) -> StoreSet {
        StoreSet {
            tenant: "t".into(),
            stores: stores
                .iter()
                .map(|(n, s)| {
                    let cfg = StoreConfig::Local {
                        root: format!("/nonexistent/{n}").into(),
                    };
                    Arc::new(ArchiveStore::new(
                        n,
                        &cfg,
                        s.clone() as Arc<dyn ObjectStore>,
                    ))
                })
                .collect(),
            failover: StoreFailover {
                after_failures: after,
                retry_after: Dur(Duration::from_millis(retry_ms)),
            },
        }
    }

    async fn names(s: &Switch) -> Vec<String> {
        use futures::TryStreamExt;
        let mut v: Vec<String> = s
            .inner
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        v.sort();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn objects_move_to_the_next_store_and_return_once_the_first_is_back() {
        let (a, b) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
        let set = set(&[("a", a.clone()), ("b", b.clone())], 3, 60_000);
        let put = |n: u32| {
            let set = set.clone();
            async move {
                set.put(
                    &ObjectPath::from(format!("t/o{n}")),
                    Bytes::from_static(b"x"),
                    now_ms(),
                )
                .await
                .name
                .clone()
            }
        };
        assert_eq!(put(0).await, "a");
        a.off.store(true, Ordering::SeqCst);
        // Three failures in a row (with back-offs between): then the same object goes to b.
        assert_eq!(put(1).await, "b");
        assert!(!set.stores[0].is_up());
        assert_eq!(set.stores[0].failovers.load(Ordering::SeqCst), 1);
        // While a is down and its retry not due, objects go straight to b.
        assert_eq!(put(2).await, "b");
        // a back, but not tried before retry_after.
        a.off.store(false, Ordering::SeqCst);
        assert_eq!(put(3).await, "b");
        tokio::time::advance(Duration::from_secs(61)).await;
        // The wall clock decides when a retry is due; force it.
        set.stores[0].next_try_ms.store(0, Ordering::SeqCst);
        assert_eq!(put(4).await, "a");
        assert!(set.stores[0].is_up());
        assert_eq!(names(&a).await, ["t/o0", "t/o4"]);
        assert_eq!(names(&b).await, ["t/o1", "t/o2", "t/o3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_retry_keeps_the_store_down_and_one_object_makes_it() {
        let (a, b) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
        let set = set(&[("a", a.clone()), ("b", b.clone())], 1, 60_000);
        a.off.store(true, Ordering::SeqCst);
        let p = ObjectPath::from("t/x");
        let body = Bytes::from_static(b"x");
        assert_eq!(set.put(&p, body.clone(), now_ms()).await.name, "b");
        set.stores[0].next_try_ms.store(0, Ordering::SeqCst);
        // The due retry is claimed once: a second claim right after is refused.
        assert!(set.stores[0].claim(Duration::from_secs(60)));
        assert!(!set.stores[0].claim(Duration::from_secs(60)));
        set.stores[0].next_try_ms.store(0, Ordering::SeqCst);
        assert_eq!(set.put(&p, body, now_ms()).await.name, "b");
        assert!(!set.stores[0].is_up(), "the retry failed: still down");
        assert_eq!(
            set.stores[0].failovers.load(Ordering::SeqCst),
            1,
            "one failover, not one per retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_a_failed_write_left_is_deleted_once_the_store_is_back() {
        let (a, b) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
        let set = set(&[("a", a.clone()), ("b", b.clone())], 1, 60_000);
        a.lose_answers.store(true, Ordering::SeqCst);
        let body = Bytes::from_static(b"x");
        let first = ObjectPath::from("t/first");
        assert_eq!(set.put(&first, body.clone(), now_ms()).await.name, "b");
        assert_eq!(names(&a).await, ["t/first"], "the lost answer left a copy");
        a.lose_answers.store(false, Ordering::SeqCst);
        set.stores[0].next_try_ms.store(0, Ordering::SeqCst);
        let second = ObjectPath::from("t/second");
        assert_eq!(set.put(&second, body, now_ms()).await.name, "a");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(names(&a).await, ["t/second"], "the copy is gone");
        assert_eq!(names(&b).await, ["t/first"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_store_down_is_retried_with_the_back_off_not_after_retry_after() {
        let a = Arc::new(Switch::default());
        let set = set(&[("a", a.clone())], 1, 3_600_000);
        a.off.store(true, Ordering::SeqCst);
        let task = {
            let set = set.clone();
            tokio::spawn(async move {
                set.put(&ObjectPath::from("t/z"), Bytes::from_static(b"z"), now_ms())
                    .await
                    .name
                    .clone()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!set.stores[0].is_up());
        a.off.store(false, Ordering::SeqCst);
        // Within the back-off (at most 30 s), far before retry_after (1 h).
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(task.is_finished());
        assert_eq!(task.await.unwrap(), "a");
        assert!(set.stores[0].is_up());
    }

    /// A store that refuses one object (a policy, a size limit) while other
    /// writes keep it up: that object moves on after `after_failures` tries.
    #[tokio::test(start_paused = true)]
    async fn an_object_one_store_keeps_refusing_moves_on_while_the_store_stays_up() {
        let (a, b) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
        let set = set(&[("a", a.clone()), ("b", b.clone())], 3, 60_000);
        a.refuse.lock().unwrap().push("t/poison".into());
        let task = {
            let set = set.clone();
            tokio::spawn(async move {
                set.put(
                    &ObjectPath::from("t/poison"),
                    Bytes::from_static(b"p"),
                    now_ms(),
                )
                .await
                .name
                .clone()
            })
        };
        // Another archive's writes succeed at a between the refusals.
        for n in 0..20 {
            let p = ObjectPath::from(format!("u/ok{n}"));
            assert_eq!(
                set.put(&p, Bytes::from_static(b"k"), now_ms()).await.name,
                "a"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(task.await.unwrap(), "b");
        assert!(
            set.stores[0].is_up(),
            "a takes the others' objects: it stays up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_retry_waits_retry_after_from_its_end() {
        let a = Arc::new(Switch::default());
        let set = set(&[("a", a.clone())], 1, 60_000);
        let f = set.failover;
        a.off.store(true, Ordering::SeqCst);
        assert!(set.stores[0].failed("x", &f, None));
        set.stores[0].next_try_ms.store(0, Ordering::SeqCst);
        assert!(set.stores[0].claim(f.retry_after.0));
        // The retry fails (after a long hang): the next is retry_after from now.
        let before = clock_ms();
        assert!(set.stores[0].failed("x", &f, None));
        assert!(set.stores[0].next_try_ms.load(Ordering::SeqCst) >= before + 60_000);
    }

    /// A DR store that went down shows up again once it answers, though no
    /// object goes there while the first store is up.
    #[tokio::test(start_paused = true)]
    async fn a_later_store_that_answers_again_is_up_again() {
        let (a, b) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
        let set = set(&[("a", a.clone()), ("b", b.clone())], 1, 60_000);
        let f = set.failover;
        set.stores[1].failed("dr went away", &f, None);
        assert!(!set.stores[1].is_up());
        set.stores[1].next_try_ms.store(0, Ordering::SeqCst);
        let p = ObjectPath::from("t/1");
        assert_eq!(
            set.put(&p, Bytes::from_static(b"1"), now_ms()).await.name,
            "a"
        );
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(set.stores[1].is_up());
        assert_eq!(set.stores[1].report()["last_error"], Value::Null);
        assert_eq!(names(&b).await, Vec::<String>::new(), "probed, not written");
    }

    /// Two entries for one bucket: a failed write through one that the other
    /// took is not deleted through the first (it is the same object).
    #[tokio::test(start_paused = true)]
    async fn no_clean_up_through_a_store_at_the_same_place() {
        let shared = Arc::new(Switch::default());
        let cfg = StoreConfig::S3 {
            bucket: "logs".into(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            path_style: false,
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
        };
        let via = |n: &str| {
            Arc::new(ArchiveStore::new(
                n,
                &cfg,
                shared.clone() as Arc<dyn ObjectStore>,
            ))
        };
        let set = StoreSet {
            tenant: "t".into(),
            stores: vec![via("a"), via("b")],
            failover: StoreFailover {
                after_failures: 1,
                retry_after: Dur(Duration::from_secs(60)),
            },
        };
        shared.lose_answers.store(true, Ordering::SeqCst);
        let p = ObjectPath::from("t/x");
        let task = {
            let set = set.clone();
            let p = p.clone();
            tokio::spawn(async move {
                set.put(&p, Bytes::from_static(b"x"), now_ms())
                    .await
                    .name
                    .clone()
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        shared.lose_answers.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(31)).await;
        task.await.unwrap();
        // Both entries failed it once; whichever took it, neither may delete it later.
        for s in &set.stores {
            assert!(
                s.orphans.lock().unwrap().is_empty(),
                "{} would delete the object",
                s.name
            );
        }
        assert_eq!(names(&shared).await, ["t/x"]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_store_down_waits_and_writes_once_one_is_back() {
        let (a, b) = (Arc::new(Switch::default()), Arc::new(Switch::default()));
        let set = set(&[("a", a.clone()), ("b", b.clone())], 1, 1_000);
        a.off.store(true, Ordering::SeqCst);
        b.off.store(true, Ordering::SeqCst);
        let task = {
            let set = set.clone();
            tokio::spawn(async move {
                set.put(
                    &ObjectPath::from("t/y"),
                    Bytes::from_static(b"y"),
                    now_ms() - 5_000,
                )
                .await
                .name
                .clone()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!set.stores[0].is_up() && !set.stores[1].is_up());
        let waiting: Vec<_> = set
            .stores
            .iter()
            .map(|s| s.oldest_unwritten_ms(now_ms()))
            .collect();
        assert!(
            waiting.iter().any(|w| w.is_some_and(|ms| ms >= 5_000)),
            "{waiting:?}"
        );
        b.off.store(false, Ordering::SeqCst);
        for s in &set.stores {
            s.next_try_ms.store(0, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(task.await.unwrap(), "b");
        assert_eq!(names(&b).await, ["t/y"]);
        assert!(set
            .stores
            .iter()
            .all(|s| s.oldest_unwritten_ms(now_ms()).is_none()));
        let r = set.stores[1].report();
        assert_eq!(r["objects"], 1);
        assert_eq!(r["up"], true);
    }
}
