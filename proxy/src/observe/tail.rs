//! Live tail: `GET /admin/tail?tenant=T[&query=Q][&rate=N]` streams, as
//! server-sent events, the tenant's processed events that match a query, each
//! with its disposition and the stage that decided it.
//!
//! Tailing never slows ingestion: the chain's thread looks at a batch for a
//! tail only while that tail has budget left this second (events matched
//! against its query, events shown) and its queue to the client has room;
//! past that, whole batches are skipped and counted, and the client is told
//! how many (`event: skipped`). How many tails may be open is capped
//! (`admin.max_tails`).
use super::Watcher;
use crate::event::{Batch, Disposition, Why};
use crate::rules::query::Query;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Events a tail shows per second unless its client asks for fewer (`rate`).
pub const DEFAULT_RATE: u32 = 100;
/// The most a client may ask for.
pub const MAX_RATE: u32 = 2_000;
/// Events matched against tails' queries per second, at most, shared by every
/// tail open (each gets its share): what bounds tailing's cost on the intake
/// threads when queries match rarely, however many tails are open.
const CONSIDER_PER_SECOND: u32 = 20_000;
/// Messages queued for a slow client before batches are skipped for it.
const QUEUE: usize = 256;
/// A comment line this often, so a client that went away is noticed (the
/// write fails) even when nothing matches.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Every tenant's tails, and the cap on how many are open.
pub struct Tails {
    max: usize,
    open: Arc<AtomicUsize>,
    tenants: RwLock<HashMap<String, Arc<TenantTails>>>,
}

/// Why a tail cannot be opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    #[error("no tenant {0:?}")]
    UnknownTenant(String),
    #[error("{0} tails are open already (admin.max_tails); close one and retry")]
    TooMany(usize),
}

impl Tails {
    pub fn new(max: usize) -> Arc<Tails> {
        Arc::new(Tails {
            max,
            open: Arc::default(),
            tenants: RwLock::default(),
        })
    }

    /// Tenant `name`'s watcher, for its chain.
    pub fn tenant(&self, name: &str) -> Arc<TenantTails> {
        self.tenants
            .write()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(TenantTails::default()))
            .clone()
    }

    /// Opens a tail on `tenant`'s events matching `query` (none: all), at most
    /// `rate` shown per second. Closed when the returned `Tail` is dropped.
    pub fn open(&self, tenant: &str, query: Option<Query>, rate: u32) -> Result<Tail, TailError> {
        let tails = self
            .tenants
            .read()
            .unwrap()
            .get(tenant)
            .cloned()
            .ok_or_else(|| TailError::UnknownTenant(tenant.to_string()))?;
        // Counted first, so two racing opens cannot both pass the cap.
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(TailError::TooMany(self.max));
        }
        crate::telemetry::METRICS.tails_open.inc();
        let (tx, rx) = mpsc::channel(QUEUE);
        let sub = Arc::new(Subscriber {
            query,
            rate: rate.clamp(1, MAX_RATE),
            tx,
            window: Mutex::new(Window::new(Instant::now(), 0)),
            open: self.open.clone(),
        });
        tails.subscribers.write().unwrap().push(sub.clone());
        tails.active.fetch_add(1, Ordering::AcqRel);
        Ok(Tail {
            messages: rx,
            sub,
            tails,
            open: self.open.clone(),
        })
    }
}

/// An open tail: its messages, each a whole server-sent event.
pub struct Tail {
    pub messages: mpsc::Receiver<Bytes>,
    sub: Arc<Subscriber>,
    tails: Arc<TenantTails>,
    open: Arc<AtomicUsize>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.tails
            .subscribers
            .write()
            .unwrap()
            .retain(|s| !Arc::ptr_eq(s, &self.sub));
        self.tails.active.fetch_sub(1, Ordering::AcqRel);
        self.open.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::METRICS.tails_open.dec();
    }
}

/// One tenant's open tails: the watcher its chain calls.
#[derive(Default)]
pub struct TenantTails {
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    /// How many: read on every batch, so a tenant nobody tails pays one load.
    active: AtomicUsize,
}

struct Subscriber {
    query: Option<Query>,
    /// Events shown per second, at most.
    rate: u32,
    tx: mpsc::Sender<Bytes>,
    window: Mutex<Window>,
    /// Tails open in all: this one's share of the matching budget.
    open: Arc<AtomicUsize>,
}

/// One second of a tail's budget.
struct Window {
    start: Instant,
    /// Events this tail may match against its query this second.
    may_consider: u32,
    considered: u32,
    shown: u32,
    /// Events not looked at or not shown, told to the client once a second.
    skipped: u64,
}

impl Window {
    fn new(start: Instant, tails_open: usize) -> Window {
        Window {
            start,
            may_consider: CONSIDER_PER_SECOND / tails_open.max(1) as u32,
            considered: 0,
            shown: 0,
            skipped: 0,
        }
    }
}

impl Watcher for TenantTails {
    fn wants_reasons(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    fn watch(&self, batch: &Batch) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let subs = self.subscribers.read().unwrap().clone();
        for sub in subs {
            sub.offer(batch);
        }
    }
}

impl Subscriber {
    fn offer(&self, batch: &Batch) {
        let Ok(mut w) = self.window.try_lock() else {
            // Another thread is filling this tail: skip rather than wait.
            return;
        };
        let now = Instant::now();
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            if w.skipped > 0 {
                let note = format!("event: skipped\ndata: {{\"skipped\":{}}}\n\n", w.skipped);
                let _ = self.tx.try_send(Bytes::from(note));
            }
            *w = Window::new(now, self.open.load(Ordering::Relaxed));
        }
        let n = batch.events.len();
        let room = self.tx.capacity();
        if room == 0 || w.considered >= w.may_consider || w.shown >= self.rate {
            w.skipped += n as u64;
            return;
        }
        let mut sent = 0;
        for (i, ev) in batch.events.iter().enumerate() {
            if w.considered >= w.may_consider || w.shown >= self.rate || sent >= room {
                w.skipped += (n - i) as u64;
                break;
            }
            w.considered += 1;
            if self.query.as_ref().is_some_and(|q| !q.matches(ev)) {
                continue;
            }
            let why = batch.why.as_ref().and_then(|w| w.get(i));
            let line = message(batch, i, why);
            if self.tx.try_send(line).is_err() {
                w.skipped += 1;
                continue;
            }
            w.shown += 1;
            sent += 1;
        }
    }
}

/// Event `i` of `batch` as one server-sent event:
/// `data: {"time":..,"disposition":..,["rule"|"plugin":..,]"event":{..}}`.
fn message(batch: &Batch, i: usize, why: Option<&Why>) -> Bytes {
    let disposition = batch.dispositions[i];
    let mut head = serde_json::Map::new();
    head.insert("received_at_ms".into(), batch.meta.received_at_ms.into());
    head.insert("intake".into(), batch.meta.intake.as_str().into());
    let (label, by) = describe(disposition, why.unwrap_or(&Why::Untouched));
    head.insert("disposition".into(), label.into());
    if let Some((key, value)) = by {
        head.insert(key.into(), value);
    }
    let mut out = b"data: ".to_vec();
    let head = serde_json::to_vec(&serde_json::Value::Object(head)).expect("JSON in memory");
    // `{...}` without its closing brace, then the event.
    out.extend_from_slice(&head[..head.len() - 1]);
    out.extend_from_slice(b",\"event\":");
    batch.events[i].write_json(&mut out);
    out.extend_from_slice(b"}\n\n");
    Bytes::from(out)
}

/// What a tail says an event's fate is: `indexed`, `sampled` (a rule matched,
/// its sample rate kept it in the index), `excluded` (archive only),
/// `dropped`, `over_quota`; and who decided (`rule`, `plugin`, `quota`).
fn describe(
    d: Disposition,
    why: &Why,
) -> (&'static str, Option<(&'static str, serde_json::Value)>) {
    use serde_json::json;
    let action = match d {
        Disposition::Index => "index",
        Disposition::ArchiveOnly => "archive_only",
        Disposition::Drop => "drop",
    };
    match (d, why) {
        (Disposition::Index, Why::Rule { name, kept: true }) => {
            ("sampled", Some(("rule", json!(name))))
        }
        (Disposition::Index, _) => ("indexed", None),
        (_, Why::OverQuota) => ("over_quota", Some(("quota", json!(action)))),
        (_, Why::Rule { name, .. }) => (fate(d), Some(("rule", json!(name)))),
        (_, Why::Plugin { name, failed }) => (
            fate(d),
            Some(("plugin", json!({"name": name, "call_failed": failed}))),
        ),
        (_, Why::Untouched) => (fate(d), None),
    }
}

fn fate(d: Disposition) -> &'static str {
    match d {
        Disposition::Drop => "dropped",
        _ => "excluded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn batch(n: usize) -> Batch {
        let events = (0..n)
            .map(|i| Event {
                message: format!("line {i}"),
                status: Some(if i % 2 == 0 { "error" } else { "info" }.into()),
                ..Default::default()
            })
            .collect();
        Batch::for_test("acme", 100, events)
    }

    fn drain(t: &mut Tail) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(m) = t.messages.try_recv() {
            let text = String::from_utf8(m.to_vec()).unwrap();
            if let Some(json) = text.strip_prefix("data: ") {
                out.push(serde_json::from_str(json.trim_end()).unwrap());
            }
        }
        out
    }

    #[test]
    fn only_matching_events_with_their_fate() {
        let tails = Tails::new(4);
        let watcher = tails.tenant("acme");
        assert!(!watcher.wants_reasons(), "nobody looks yet");
        let mut t = tails
            .open("acme", Some(Query::parse("status:error").unwrap()), 100)
            .unwrap();
        assert!(watcher.wants_reasons());
        let mut b = batch(6);
        b.why = Some(vec![Why::Untouched; 6]);
        b.dispositions[2] = Disposition::ArchiveOnly;
        b.why.as_mut().unwrap()[2] = Why::Rule {
            name: "noisy".into(),
            kept: false,
        };
        b.why.as_mut().unwrap()[4] = Why::Rule {
            name: "debug-90".into(),
            kept: true,
        };
        watcher.watch(&b);
        let got = drain(&mut t);
        let seen: Vec<_> = got
            .iter()
            .map(|m| {
                (
                    m["event"]["message"].as_str().unwrap().to_string(),
                    m["disposition"].as_str().unwrap().to_string(),
                    m["rule"].as_str().map(str::to_string),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("line 0".into(), "indexed".into(), None),
                ("line 2".into(), "excluded".into(), Some("noisy".into())),
                ("line 4".into(), "sampled".into(), Some("debug-90".into())),
            ]
        );
    }

    #[test]
    fn the_rate_bounds_what_is_shown_and_the_rest_is_counted() {
        let tails = Tails::new(4);
        let watcher = tails.tenant("acme");
        let mut t = tails.open("acme", None, 10).unwrap();
        watcher.watch(&batch(25));
        watcher.watch(&batch(5));
        assert_eq!(drain(&mut t).len(), 10);
        // The next second tells how many were skipped.
        t.sub.window.lock().unwrap().start -= Duration::from_secs(2);
        watcher.watch(&batch(1));
        let text = String::from_utf8(t.messages.try_recv().unwrap().to_vec()).unwrap();
        assert_eq!(text, "event: skipped\ndata: {\"skipped\":20}\n\n");
    }

    #[test]
    fn open_tails_share_one_matching_budget() {
        let tails = Tails::new(4);
        let watcher = tails.tenant("acme");
        let never = || Some(Query::parse("service:nothing").unwrap());
        let a = tails.open("acme", never(), 10).unwrap();
        let _b = tails.open("acme", never(), 10).unwrap();
        // A new second: its window takes the share of the two tails open now.
        a.sub.window.lock().unwrap().start -= Duration::from_secs(2);
        for _ in 0..30 {
            watcher.watch(&batch(1_000));
        }
        let w = a.sub.window.lock().unwrap();
        assert_eq!(
            w.considered,
            CONSIDER_PER_SECOND / 2,
            "half the budget each"
        );
        assert_eq!(w.skipped, 30_000 - u64::from(CONSIDER_PER_SECOND / 2));
    }

    #[test]
    fn a_slow_client_costs_skipped_batches_not_waiting() {
        let tails = Tails::new(4);
        let watcher = tails.tenant("acme");
        let t = tails.open("acme", None, MAX_RATE).unwrap();
        for _ in 0..(QUEUE + 10) {
            watcher.watch(&batch(1));
        }
        assert_eq!(t.messages.len(), QUEUE);
        assert_eq!(t.sub.window.lock().unwrap().skipped, 10);
    }

    #[test]
    fn the_cap_holds_and_closing_frees_a_place() {
        let tails = Tails::new(2);
        tails.tenant("acme");
        let a = tails.open("acme", None, 1).unwrap();
        let _b = tails.open("acme", None, 1).unwrap();
        assert_eq!(
            tails.open("acme", None, 1).err(),
            Some(TailError::TooMany(2))
        );
        drop(a);
        assert!(tails.open("acme", None, 1).is_ok());
        assert_eq!(
            tails.open("nobody", None, 1).err(),
            Some(TailError::UnknownTenant("nobody".into()))
        );
    }
}
