//! A rehydration job as asked for (the admin API's JSON body), checked and
//! resolved into absolute times, and what follows from it alone: its id and
//! the archive partitions (`dt=/hour=` prefixes) it reads.
use chrono::{DateTime, Duration, DurationRound, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The longest time range one job may cover: 31 days of hourly partitions.
pub const MAX_RANGE: Duration = Duration::days(31);
/// How late an event may have arrived after its own timestamp and still be
/// found: the default, and the most a job may ask for.
pub const DEFAULT_LATE_ARRIVAL: std::time::Duration = std::time::Duration::from_secs(3600);
pub const MAX_LATE_ARRIVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Events per second sent by default, and at most.
pub const DEFAULT_RATE: u64 = 5_000;
pub const MAX_RATE: u64 = 1_000_000;
/// A query longer than this is refused (the admin API takes 64 KiB bodies).
pub const MAX_QUERY_BYTES: usize = 4096;
/// Partitions are read from one hour before `from`: agents' clocks run a little
/// ahead, so an event may arrive (and be partitioned) before its timestamp.
const EARLY_ARRIVAL: Duration = Duration::hours(1);

/// The job as the admin API takes it (`POST /admin/rehydrations`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub tenant: String,
    /// RFC 3339 (`2026-12-03T09:00:00Z`), `now`, or relative to now (`-2h`, `-30m`, `-1d`).
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub query: Option<String>,
    /// One backend of the tenant's route instead of the whole route.
    #[serde(default)]
    pub to_backend: Option<String>,
    /// Events per second at most.
    #[serde(default)]
    pub rate: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
    /// Forget a checkpoint of the same job (a finished one included) and start over.
    #[serde(default)]
    pub restart: bool,
    /// How late after their timestamp events may have arrived (`1h`, at most `24h`).
    #[serde(default)]
    pub late_arrival: Option<String>,
}

/// What a job reads and where it sends it: equal specs are the same job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub tenant: String,
    /// Milliseconds since the epoch; events with `from_ms <= timestamp < to_ms`.
    pub from_ms: i64,
    pub to_ms: i64,
    pub query: Option<String>,
    pub to_backend: Option<String>,
    pub late_arrival_s: u64,
}

/// A checked request: the spec, and how this run goes.
#[derive(Debug, Clone)]
pub struct Checked {
    pub spec: Spec,
    pub rate: u64,
    pub dry_run: bool,
    pub restart: bool,
}

/// Checks `r` at `now`. Errors say which field and why.
pub fn check(r: &Request, now: DateTime<Utc>) -> Result<Checked, String> {
    let from = parse_time(&r.from, now).map_err(|e| format!("from: {e}"))?;
    let to = parse_time(&r.to, now).map_err(|e| format!("to: {e}"))?;
    if from >= to {
        return Err(format!(
            "from ({}) must be before to ({})",
            rfc3339(from),
            rfc3339(to)
        ));
    }
    if to - from > MAX_RANGE {
        return Err(format!(
            "the range is {} hours; at most {} days per job: split it into several jobs",
            (to - from).num_hours(),
            MAX_RANGE.num_days()
        ));
    }
    if to > now + Duration::minutes(1) {
        return Err(format!(
            "to ({}) is in the future: the archive cannot hold those events yet",
            rfc3339(to)
        ));
    }
    let query = match r.query.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) if q.len() > MAX_QUERY_BYTES => {
            return Err(format!("query: longer than {MAX_QUERY_BYTES} bytes"))
        }
        Some(q) => {
            crate::rules::query::Query::parse(q).map_err(|e| format!("query {q:?}: {e}"))?;
            Some(q.to_string())
        }
    };
    let rate = r.rate.unwrap_or(DEFAULT_RATE);
    if rate == 0 || rate > MAX_RATE {
        return Err(format!("rate: between 1 and {MAX_RATE} events per second"));
    }
    let late = match &r.late_arrival {
        None => DEFAULT_LATE_ARRIVAL,
        Some(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("late_arrival {s:?}: {e} (e.g. \"1h\")"))?,
    };
    if late > MAX_LATE_ARRIVAL {
        return Err("late_arrival: at most 24h".into());
    }
    Ok(Checked {
        spec: Spec {
            tenant: r.tenant.clone(),
            from_ms: from.timestamp_millis(),
            to_ms: to.timestamp_millis(),
            query,
            to_backend: r.to_backend.clone().filter(|b| !b.is_empty()),
            late_arrival_s: late.as_secs(),
        },
        rate,
        dry_run: r.dry_run,
        restart: r.restart,
    })
}

/// `2026-12-03T09:00:00Z`, `now`, or `-2h` (relative to now; humantime units).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel.trim()).map_err(|e| {
            format!("{s:?}: {e} (a relative time is `-` and a duration: -2h, -30m, -1d)")
        })?;
        let d = Duration::from_std(d).map_err(|_| format!("{s:?} is too far back"))?;
        return now
            .checked_sub_signed(d)
            .ok_or_else(|| format!("{s:?} is too far back"));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{s:?}: {e} (expected RFC 3339 such as 2026-12-03T09:00:00Z, now, or -2h)")
        })
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub fn rfc3339_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(rfc3339)
        .unwrap_or_else(|| ms.to_string())
}

impl Spec {
    /// `rh-` and 16 hex digits of a hash of the spec: the same command (same
    /// tenant, absolute range, query, backend and late arrival) is the same
    /// job, and resumes it. The rate is not part of it: a job may resume slower.
    pub fn id(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a spec serializes");
        let hash = sha2::Sha256::digest(&canonical);
        let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("rh-{hex}")
    }

    /// The `<tenant>/dt=YYYY-MM-DD/hour=HH/` prefixes to list, oldest first: the
    /// hours events of the range may have arrived in (objects are partitioned
    /// by arrival): from an hour before `from` to `late_arrival` after `to`.
    pub fn partitions(&self, now: DateTime<Utc>) -> Vec<String> {
        let hour = Duration::hours(1);
        let at = |ms: i64| Utc.timestamp_millis_opt(ms).single().unwrap_or(now);
        let first = (at(self.from_ms) - EARLY_ARRIVAL)
            .duration_trunc(hour)
            .expect("an hour divides any time");
        let late = Duration::seconds(self.late_arrival_s as i64);
        // Nothing arrives after now: no prefix past the current hour.
        let last = (at(self.to_ms - 1) + late).min(now);
        let mut out = Vec::new();
        let mut t = first;
        while t <= last {
            out.push(format!(
                "{}/{}/",
                self.tenant,
                t.format("dt=%Y-%m-%d/hour=%H")
            ));
            t += hour;
        }
        out
    }

    /// Whether an event's timestamp is in `[from, to)`.
    pub fn in_range(&self, timestamp_ms: i64) -> bool {
        self.from_ms <= timestamp_ms && timestamp_ms < self.to_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T12:34:56Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn request(from: &str, to: &str) -> Request {
        Request {
            tenant: "acme".into(),
            from: from.into(),
            to: to.into(),
            query: None,
            to_backend: None,
            rate: None,
            dry_run: false,
            restart: false,
            late_arrival: None,
        }
    }

    #[test]
    fn times_are_rfc3339_now_or_relative() {
        let n = now();
        assert_eq!(parse_time("now", n).unwrap(), n);
        assert_eq!(parse_time("-2h", n).unwrap(), n - Duration::hours(2));
        assert_eq!(parse_time("-1d", n).unwrap(), n - Duration::days(1));
        assert_eq!(
            rfc3339(parse_time("2026-12-03T10:00:00+01:00", n).unwrap()),
            "2026-12-03T09:00:00Z"
        );
        for bad in ["yesterday", "-2 fortnights", "2026-12-03 09:00", "+2h", ""] {
            assert!(parse_time(bad, n).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_checked() {
        let n = now();
        let c = check(&request("-2h", "now"), n).unwrap();
        assert_eq!(c.spec.to_ms - c.spec.from_ms, 2 * 3600 * 1000);
        assert_eq!(c.rate, DEFAULT_RATE);
        let e = check(&request("now", "-2h"), n).unwrap_err();
        assert!(e.contains("must be before"), "{e}");
        let e = check(&request("-2h", "-2h"), n).unwrap_err();
        assert!(e.contains("must be before"), "{e}");
        let e = check(&request("-40d", "now"), n).unwrap_err();
        assert!(e.contains("at most 31 days"), "{e}");
        let e = check(&request("-1h", "2026-12-04T00:00:00Z"), n).unwrap_err();
        assert!(e.contains("future"), "{e}");
        let mut r = request("-1h", "now");
        r.query = Some("service:(web".into());
        let e = check(&r, n).unwrap_err();
        assert!(e.starts_with("query"), "{e}");
        r.query = Some("x".repeat(MAX_QUERY_BYTES + 1));
        assert!(check(&r, n).unwrap_err().contains("longer than"));
        let mut r = request("-1h", "now");
        r.rate = Some(0);
        assert!(check(&r, n).unwrap_err().starts_with("rate"));
        r.rate = Some(MAX_RATE + 1);
        assert!(check(&r, n).unwrap_err().starts_with("rate"));
        let mut r = request("-1h", "now");
        r.late_arrival = Some("25h".into());
        assert!(check(&r, n).unwrap_err().starts_with("late_arrival"));
    }

    #[test]
    fn the_id_follows_what_is_sent_not_how_fast() {
        let n = now();
        let a = check(&request("2026-12-03T09:00:00Z", "2026-12-03T10:00:00Z"), n).unwrap();
        let mut r = request("2026-12-03T09:00:00Z", "2026-12-03T10:00:00Z");
        r.rate = Some(10);
        r.dry_run = true;
        let b = check(&r, n).unwrap();
        assert_eq!(a.spec.id(), b.spec.id());
        assert!(a.spec.id().starts_with("rh-") && a.spec.id().len() == 19);
        r.query = Some("service:web".into());
        assert_ne!(a.spec.id(), check(&r, n).unwrap().spec.id());
        let mut r = request("2026-12-03T09:00:00Z", "2026-12-03T10:00:01Z");
        assert_ne!(a.spec.id(), check(&r, n).unwrap().spec.id());
        r.to = "2026-12-03T10:00:00Z".into();
        r.to_backend = Some("dd-eu".into());
        assert_ne!(a.spec.id(), check(&r, n).unwrap().spec.id());
    }

    #[test]
    fn partitions_cover_early_and_late_arrivals_up_to_now() {
        let n = now();
        let c = check(&request("2026-12-03T09:30:00Z", "2026-12-03T10:00:00Z"), n).unwrap();
        // 08 (an hour early), 09 (the range), 10 (to + 1h late; `to` itself excluded).
        assert_eq!(
            c.spec.partitions(n),
            vec![
                "acme/dt=2026-12-03/hour=08/",
                "acme/dt=2026-12-03/hour=09/",
                "acme/dt=2026-12-03/hour=10/",
            ]
        );
        // Across midnight, no late arrival.
        let mut r = request("2026-12-02T23:00:00Z", "2026-12-03T00:00:01Z");
        r.late_arrival = Some("0s".into());
        let p = check(&r, n).unwrap().spec.partitions(n);
        assert_eq!(
            p,
            vec![
                "acme/dt=2026-12-02/hour=22/",
                "acme/dt=2026-12-02/hour=23/",
                "acme/dt=2026-12-03/hour=00/",
            ]
        );
        // Up to now: never the hours that have not come yet.
        let c = check(&request("-30m", "now"), n).unwrap();
        let p = c.spec.partitions(n);
        assert_eq!(p.first().unwrap(), "acme/dt=2026-12-03/hour=11/");
        assert_eq!(p.last().unwrap(), "acme/dt=2026-12-03/hour=12/");
        // The whole 31 days: 744 hours and the margins, each once.
        let c = check(&request("-31d", "now"), n).unwrap();
        let p = c.spec.partitions(n);
        assert_eq!(p.len(), 31 * 24 + 2);
        let unique: std::collections::BTreeSet<_> = p.iter().collect();
        assert_eq!(unique.len(), p.len());
    }

    #[test]
    fn range_is_half_open() {
        let c = check(
            &request("2026-12-03T09:00:00Z", "2026-12-03T10:00:00Z"),
            now(),
        )
        .unwrap();
        assert!(c.spec.in_range(c.spec.from_ms));
        assert!(c.spec.in_range(c.spec.to_ms - 1));
        assert!(!c.spec.in_range(c.spec.to_ms));
        assert!(!c.spec.in_range(c.spec.from_ms - 1));
    }
}
