//! `weir rehydrate`: starts (or resumes) a rehydration job on a running proxy
//! through its admin API, shows its progress on stderr until it ends, and on
//! Ctrl-C cancels it at a chunk boundary and says how to resume it.
use super::admin::{Admin, AdminArgs};
use http::Method;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The tenant whose archive is read and whose route the events go to.
    #[arg(long)]
    tenant: String,
    /// Start of the range (inclusive) of the events' own timestamps: RFC 3339
    /// (2026-12-03T09:00:00Z), `now`, or relative (-2h, -30m, -1d).
    #[arg(long, allow_hyphen_values = true)]
    from: String,
    /// End of the range (exclusive), as --from.
    #[arg(long, allow_hyphen_values = true)]
    to: String,
    /// Only events matching this search query (Datadog syntax, as exclusion rules).
    #[arg(long, allow_hyphen_values = true)]
    query: Option<String>,
    /// Send to this backend only (one the tenant's events may go to) instead of the tenant's route.
    #[arg(long)]
    to_backend: Option<String>,
    /// Events per second at most (default 5000).
    #[arg(long)]
    rate: Option<u64>,
    /// Count the matching events and estimate the time at the rate; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Forget the job's checkpoint and start over (sends again what an earlier run sent).
    #[arg(long)]
    restart: bool,
    /// How late after their timestamp events may have arrived (default 1h, at most 24h).
    #[arg(long)]
    late_arrival: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Ctrl-Cs seen: the first cancels the job, a second stops waiting for the cancel.
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
}

/// How often progress is read, and written when stderr is not a terminal.
const POLL: Duration = Duration::from_millis(300);
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub fn run(args: Args) -> Result<(), String> {
    let admin = Admin::new(&args.admin)?;
    // SAFETY: the handler only adds to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
    }
    let body = json!({
        "tenant": args.tenant, "from": args.from, "to": args.to, "query": args.query,
        "to_backend": args.to_backend, "rate": args.rate, "dry_run": args.dry_run,
        "restart": args.restart, "late_arrival": args.late_arrival,
    });
    let job = admin.call(Method::POST, "/admin/rehydrations", Some(&body))?;
    let id = job["id"]
        .as_str()
        .ok_or_else(|| format!("the proxy answered without a job id: {job}"))?
        .to_string();
    let resume = resume_command(&args, &job);
    eprintln!("{}", headline(&job));
    if let Some(note) = job["note"].as_str() {
        eprintln!("{note}");
    }
    let path = format!("/admin/rehydrations/{id}");
    let tty = std::io::stderr().is_terminal();
    let mut last_plain = Instant::now();
    let mut cancelling = false;
    let mut view = job;
    while !is_over(&view) {
        let interrupts = wait(POLL);
        if interrupts >= 2 {
            eprintln!();
            return Err(format!("stopped waiting; rehydration {id} is still cancelling on the proxy (GET {path}); resume it later with:\n  {resume}"));
        }
        if interrupts == 1 && !cancelling {
            cancelling = true;
            if tty {
                eprintln!();
            }
            eprintln!("cancelling {id}: waiting for the chunks already sent to be delivered (Ctrl-C again to stop waiting)");
            view = admin.call(Method::DELETE, &path, None)?;
            continue;
        }
        view = admin
            .call(Method::GET, &path, None)
            .map_err(|e| format!("{e}\nresume with:\n  {resume}"))?;
        if tty {
            eprint!("\r\x1b[2K{}", progress(&view));
            let _ = std::io::stderr().flush();
        } else if last_plain.elapsed() >= PLAIN_EVERY {
            eprintln!("{}", progress(&view));
            last_plain = Instant::now();
        }
    }
    if tty {
        eprintln!();
    }
    finish(&view, &resume)
}

/// Sleeps `d` in small steps; the Ctrl-Cs seen so far.
fn wait(d: Duration) -> usize {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if INTERRUPTS.load(Ordering::SeqCst) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    INTERRUPTS.load(Ordering::SeqCst)
}

fn is_over(v: &Value) -> bool {
    matches!(
        v["state"].as_str(),
        Some("done" | "cancelled" | "failed" | "interrupted")
    )
}

/// Exit 0 only for a job that is done.
fn finish(v: &Value, resume: &str) -> Result<(), String> {
    let id = v["id"].as_str().unwrap_or("?");
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    match v["state"].as_str() {
        Some("done") if v["dry_run"] == json!(true) => {
            let e = &v["estimate"];
            let eta = e["seconds_at_rate"].as_u64().unwrap_or(0);
            println!(
                "dry run: {} events ({}) match, of {} scanned in {} objects; at {} events/s sending them takes about {}",
                e["events"], bytes(e["bytes"].as_u64().unwrap_or(0)), n("events_scanned"),
                n("objects_total"), v["rate"], duration(eta)
            );
            Ok(())
        }
        Some("done") => {
            println!(
                "done: {} events ({}) sent of {} scanned in {} objects{}",
                n("events_sent"),
                bytes(n("bytes_sent")),
                n("events_scanned"),
                n("objects_total"),
                match n("events_invalid") {
                    0 => String::new(),
                    k => format!("; {k} lines were not log objects and were skipped"),
                }
            );
            Ok(())
        }
        Some("failed") => Err(format!(
            "rehydration {id} failed after {} events sent: {}\nonce fixed, resume with:\n  {resume}",
            n("events_sent"),
            v["error"].as_str().unwrap_or("unknown error")
        )),
        state => Err(format!(
            "rehydration {id} {} after {} events sent (all delivered, checkpointed); resume with:\n  {resume}",
            state.unwrap_or("stopped"),
            n("events_sent")
        )),
    }
}

fn headline(v: &Value) -> String {
    let mut s = format!(
        "rehydration {}: tenant {}, events from {} to {}",
        v["id"].as_str().unwrap_or("?"),
        v["tenant"].as_str().unwrap_or("?"),
        v["from"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?"),
    );
    if let Some(q) = v["query"].as_str() {
        s.push_str(&format!(" matching {q:?}"));
    }
    match v["to_backend"].as_str() {
        Some(b) => s.push_str(&format!(", to backend {b}")),
        None => s.push_str(", to the tenant's route"),
    }
    if let Some(r) = v["rate"].as_u64() {
        s.push_str(&format!(", at most {r} events/s"));
    }
    if v["dry_run"] == json!(true) {
        s.push_str(" (dry run: nothing is sent)");
    }
    let resumed = v["resumed_from_events_sent"].as_u64().unwrap_or(0);
    if resumed > 0 && v["state"] != json!("done") {
        s.push_str(&format!("; resuming after {resumed} events sent"));
    }
    s
}

/// One line: events, bytes, objects, rate, ETA.
fn progress(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let eta = v["eta_seconds"]
        .as_u64()
        .map(duration)
        .unwrap_or_else(|| "-".into());
    let (what, count, size, speed) = match v["dry_run"] == json!(true) {
        true => (
            "matched",
            n("events_matched"),
            n("bytes_matched"),
            format!("{} scanned/s", n("scanned_per_second")),
        ),
        false => (
            "sent",
            n("events_sent"),
            n("bytes_sent"),
            format!("{} events/s", n("events_per_second")),
        ),
    };
    format!(
        "{}: {count} events {what} ({}), {} scanned, objects {}/{}, {speed}, ETA {eta}",
        v["state"].as_str().unwrap_or("?"),
        bytes(size),
        n("events_scanned"),
        n("objects_done"),
        n("objects_total"),
    )
}

fn bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn duration(s: u64) -> String {
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The command that resumes the job: the range as the proxy resolved it
/// (a relative `-2h` would mean another range, hence another job, later).
fn resume_command(a: &Args, job: &Value) -> String {
    let mut parts = vec![
        "weir rehydrate".to_string(),
        format!("--tenant {}", quote(&a.tenant)),
        format!("--from {}", job["from"].as_str().unwrap_or(&a.from)),
        format!("--to {}", job["to"].as_str().unwrap_or(&a.to)),
    ];
    if let Some(q) = &a.query {
        parts.push(format!("--query {}", quote(q)));
    }
    if let Some(b) = &a.to_backend {
        parts.push(format!("--to-backend {}", quote(b)));
    }
    if let Some(r) = a.rate {
        parts.push(format!("--rate {r}"));
    }
    if let Some(l) = &a.late_arrival {
        parts.push(format!("--late-arrival {}", quote(l)));
    }
    if a.admin.admin != "127.0.0.1:8089" {
        parts.push(format!("--admin {}", quote(&a.admin.admin)));
    }
    parts.join(" ")
}

/// `s` as one shell word.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@,+=".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_resume_lines() {
        let v = json!({
            "id": "rh-0123456789abcdef", "tenant": "acme", "state": "running", "dry_run": false,
            "from": "2026-12-03T09:00:00Z", "to": "2026-12-03T10:00:00Z",
            "events_sent": 1500, "bytes_sent": 3 * 1024 * 1024, "events_scanned": 9000,
            "objects_done": 2, "objects_total": 7, "events_per_second": 500, "eta_seconds": 75,
        });
        assert_eq!(
            progress(&v),
            "running: 1500 events sent (3.0 MiB), 9000 scanned, objects 2/7, 500 events/s, ETA 1m15s"
        );
        let a = Args {
            tenant: "acme".into(),
            from: "-1h".into(),
            to: "now".into(),
            query: Some("service:web -status:'debug'".into()),
            to_backend: None,
            rate: Some(100),
            dry_run: false,
            restart: false,
            late_arrival: None,
            admin: AdminArgs {
                admin: "127.0.0.1:9999".into(),
                token: Some("secret-token".into()),
            },
        };
        let r = resume_command(&a, &v);
        assert_eq!(
            r,
            "weir rehydrate --tenant acme --from 2026-12-03T09:00:00Z --to 2026-12-03T10:00:00Z \
             --query 'service:web -status:'\\''debug'\\''' --rate 100 --admin 127.0.0.1:9999"
        );
        assert!(
            !r.contains("secret-token"),
            "the token never goes on a command line"
        );
        assert!(finish(&v, &r).is_err());
        let mut done = v.clone();
        done["state"] = json!("done");
        assert!(finish(&done, &r).is_ok());
        done["state"] = json!("cancelled");
        let e = finish(&done, &r).unwrap_err();
        assert!(
            e.contains("cancelled after 1500 events") && e.contains(&r),
            "{e}"
        );
    }
}
