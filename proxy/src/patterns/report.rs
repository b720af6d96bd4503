//! What `GET /admin/patterns` answers: a tenant's top patterns by bytes in the
//! last hour, each with its counts per window (scaled up from the mined sample),
//! its exclusion-rule query and what excluding it would save per day.
use super::query::{build, View};
use super::window::Counts;
use super::{State, TenantPatterns};
use serde::Serialize;

/// Extrapolating to a day needs at least this much history (seconds), so a
/// proxy started seconds ago does not multiply a burst by thousands.
const MIN_COVERED_S: f64 = 60.0;
const HOUR_S: f64 = 3600.0;
const DAY_S: f64 = 86_400.0;

#[derive(Debug, Serialize)]
pub struct Report {
    pub tenant: String,
    /// The window patterns are ranked by, shares and daily estimates come from.
    pub window: &'static str,
    /// Seconds of history the hour window holds (less just after start).
    pub covered_seconds: f64,
    /// Events of the last hour that were mined (the rest are counted, scaled).
    pub sampled_fraction: f64,
    pub events_seen_last_hour: u64,
    pub live_patterns: usize,
    pub max_patterns: usize,
    /// Patterns evicted to stay within `max_patterns` since start.
    pub evicted_patterns: u64,
    pub patterns: Vec<PatternReport>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Volume {
    pub events: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct WindowReport {
    pub events: u64,
    pub bytes: u64,
    pub indexed: Volume,
    /// Excluded from the index, archived (`archive_only`).
    pub excluded: Volume,
    pub dropped: Volume,
}

#[derive(Debug, Serialize)]
pub struct PatternReport {
    pub id: u64,
    pub template: String,
    /// An exclusion-rule query that matches this pattern's messages (none when
    /// the template has no constant text).
    pub query: Option<String>,
    /// Checked on every pattern's examples: matches all of this one's, none of the others'.
    pub query_exact_on_examples: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_note: Option<String>,
    pub last_minute: WindowReport,
    pub last_hour: WindowReport,
    pub since_start: WindowReport,
    /// Of the tenant's events and bytes in the last hour.
    pub share_of_events: f64,
    pub share_of_bytes: f64,
    /// Of this pattern's events in the last hour, the share indexed.
    pub indexed_fraction: f64,
    pub estimated_daily_events: u64,
    pub estimated_daily_bytes: u64,
    /// What an exclusion rule for it would keep out of the index per day: its
    /// events indexed now (those excluded already save nothing more).
    pub estimated_daily_events_saved: u64,
    pub estimated_daily_bytes_saved: u64,
    pub example: String,
}

fn scaled(c: &Counts, scale: f64) -> WindowReport {
    let v = |i: usize| Volume {
        events: (c.events[i] as f64 * scale).round() as u64,
        bytes: (c.bytes[i] as f64 * scale).round() as u64,
    };
    let (indexed, excluded, dropped) = (v(0), v(1), v(2));
    WindowReport {
        events: indexed.events + excluded.events + dropped.events,
        bytes: indexed.bytes + excluded.bytes + dropped.bytes,
        indexed,
        excluded,
        dropped,
    }
}

/// A fraction, 0 when there is nothing to divide.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// A pattern's counts copied out of the state, so queries are built unlocked.
struct Snapshot {
    id: u64,
    tokens: Vec<Box<str>>,
    examples: Vec<Box<str>>,
    minute: WindowReport,
    hour: WindowReport,
    total: WindowReport,
}

impl State {
    /// Seen / mined of minute `m` (1 when nothing was mined then).
    fn scale(&self, m: i64) -> f64 {
        match self.traffic.minute(m) {
            Some(t) if t.mined > 0 => t.seen as f64 / t.mined as f64,
            _ => 1.0,
        }
    }

    /// A pattern's counts over the last `minutes`, scaled minute by minute.
    fn windowed(&self, w: &super::window::Window<Counts>, now: i64, minutes: i64) -> WindowReport {
        let mut sum = WindowReport::default();
        for (weight, m, c) in w.weighted(now, minutes) {
            let r = scaled(c, weight * self.scale(m));
            for (s, x) in [
                (&mut sum.indexed, r.indexed),
                (&mut sum.excluded, r.excluded),
                (&mut sum.dropped, r.dropped),
            ] {
                s.events += x.events;
                s.bytes += x.bytes;
            }
        }
        sum.events = sum.indexed.events + sum.excluded.events + sum.dropped.events;
        sum.bytes = sum.indexed.bytes + sum.excluded.bytes + sum.dropped.bytes;
        sum
    }

    fn snapshot(&self, now: i64) -> Vec<Snapshot> {
        let overall = ratio(self.seen_total as f64, self.mined_total as f64);
        self.miner
            .clusters()
            .map(|c| Snapshot {
                id: c.id,
                tokens: c.tokens.clone(),
                examples: c.data.examples.clone(),
                minute: self.windowed(&c.data.window, now, 1),
                hour: self.windowed(&c.data.window, now, 60),
                total: scaled(&c.data.total, overall.max(1.0)),
            })
            .collect()
    }
}

impl TenantPatterns {
    /// The top `limit` patterns by bytes in the last hour.
    pub fn report(&self, limit: usize) -> Report {
        let now = self.clock.now_ms();
        let (mut snaps, seen, mined, started, live, max, evicted) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let (seen, mined) = s
                .traffic
                .weighted(now, 60)
                .fold((0.0, 0.0), |(a, b), (w, _, t)| {
                    (a + w * t.seen as f64, b + w * t.mined as f64)
                });
            let m = &s.miner;
            (
                s.snapshot(now),
                seen,
                mined,
                s.started_ms,
                m.len(),
                m.limits().max_patterns,
                m.evicted,
            )
        };
        snaps.sort_by(|a, b| {
            (b.hour.bytes, b.hour.events, a.id).cmp(&(a.hour.bytes, a.hour.events, b.id))
        });
        let covered = ((now - started) as f64 / 1000.0).clamp(MIN_COVERED_S, HOUR_S);
        let per_day = DAY_S / covered;
        let (all_events, all_bytes) = snaps.iter().fold((0u64, 0u64), |(e, b), s| {
            (e + s.hour.events, b + s.hour.bytes)
        });
        let views: Vec<View> = snaps
            .iter()
            .map(|s| View {
                id: s.id,
                tokens: &s.tokens,
                examples: &s.examples,
            })
            .collect();
        let patterns = (0..snaps.len().min(limit))
            .map(|i| {
                let s = &snaps[i];
                let q = build(&views, i);
                let day = |x: u64| (x as f64 * per_day).round() as u64;
                PatternReport {
                    id: s.id,
                    template: s.tokens.join(" "),
                    query: q.query,
                    query_exact_on_examples: q.exact_on_examples,
                    query_note: q.note,
                    last_minute: s.minute,
                    last_hour: s.hour,
                    since_start: s.total,
                    share_of_events: ratio(s.hour.events as f64, all_events as f64),
                    share_of_bytes: ratio(s.hour.bytes as f64, all_bytes as f64),
                    indexed_fraction: ratio(s.hour.indexed.events as f64, s.hour.events as f64),
                    estimated_daily_events: day(s.hour.events),
                    estimated_daily_bytes: day(s.hour.bytes),
                    estimated_daily_events_saved: day(s.hour.indexed.events),
                    estimated_daily_bytes_saved: day(s.hour.indexed.bytes),
                    example: s
                        .examples
                        .first()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Report {
            tenant: self.name.clone(),
            window: "1h",
            covered_seconds: covered.min((now - started).max(0) as f64 / 1000.0),
            sampled_fraction: if seen > 0.0 { mined / seen } else { 1.0 },
            events_seen_last_hour: seen.round() as u64,
            live_patterns: live,
            max_patterns: max,
            evicted_patterns: evicted,
            patterns,
        }
    }
}
