//! Accuracy of grok configs on real logs from Loghub (`<System>_2k.log` with its
//! `<System>_2k.log_structured.csv` ground truth), run through the plugin natively with the host's encoding.
//!
//! For each system, a grok config extracts the header fields (every CSV column except LineId, EventId and
//! EventTemplate, `Content` included); each field is compared to the CSV after trimming. The share of lines
//! whose fields all match must be at least 99%.
//!
//! The data lives outside the repository, in `../shared/data/loghub` beside it; a missing directory fails the
//! test (it must never pass silently).

use std::path::{Path, PathBuf};

use grok::{GrokPlugin, PATTERN_ATTRIBUTE};
use serde_json::{json, Value};
use weir_sdk::{testing, Event, Verdict};

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/loghub");
const MIN_SHARE: f64 = 0.99;
const IGNORED_COLUMNS: [&str; 3] = ["LineId", "EventId", "EventTemplate"];

fn data_dir() -> PathBuf {
    let dir = PathBuf::from(DATA_DIR);
    assert!(
        dir.is_dir(),
        "Loghub data not found at {} (expected ../shared/data/loghub beside the repository, holding \
         <System>_2k.log and <System>_2k.log_structured.csv); this test needs it and does not skip",
        dir.display()
    );
    dir
}

fn config(system: &str) -> Value {
    match system {
        "OpenSSH" => json!({
            "patterns": [{
                "name": "openssh",
                "pattern": r"^%{MONTH:Date} +%{MONTHDAY:Day} %{TIME:Time} %{SYSLOGHOST:Component} %{PROG}\[%{POSINT:Pid}\]: %{GREEDYDATA:Content}$"
            }]
        }),
        "Apache" => json!({
            "patterns": [{
                "name": "apache_error",
                "pattern": r"^\[%{HTTPDERROR_DATE:Time}\] \[%{LOGLEVEL:Level}\] %{GREEDYDATA:Content}$"
            }]
        }),
        // The Linux CSV calls the syslog host column "Level"; programs may contain spaces ("syslogd 1.4.1",
        // "-- root") and the pid is optional.
        "Linux" => json!({
            "custom_patterns": {"LINUXPROG": r"[^\s\[:][^\[:]*"},
            "patterns": [{
                "name": "linux_syslog",
                "pattern": r"^%{MONTH:Month} +%{MONTHDAY:Date} %{TIME:Time} %{SYSLOGHOST:Level} +%{LINUXPROG:Component}(?:\[%{POSINT:PID}\])?: ?%{GREEDYDATA:Content}$"
            }]
        }),
        "HDFS" => json!({
            "custom_patterns": {"HDFSDATE": r"[0-9]{6}", "HDFSTIME": r"[0-9]{6}"},
            "patterns": [{
                "name": "hdfs",
                "pattern": r"^%{HDFSDATE:Date} %{HDFSTIME:Time} %{NONNEGINT:Pid:int} %{LOGLEVEL:Level} %{JAVACLASS:Component}: %{GREEDYDATA:Content}$"
            }]
        }),
        other => panic!("no config for {other}"),
    }
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(other) => other.to_string(),
    }
}

struct Outcome {
    lines: usize,
    all_match: usize,
    unmatched: usize,
    examples: Vec<String>,
}

fn evaluate(dir: &Path, system: &str) -> Outcome {
    let log_path = dir.join(format!("{system}_2k.log"));
    let csv_path = dir.join(format!("{system}_2k.log_structured.csv"));
    let raw = std::fs::read(&log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let lines: Vec<&str> = match lines.last() {
        Some(&"") => lines[..lines.len() - 1].to_vec(),
        _ => lines,
    };

    let mut rdr =
        csv::Reader::from_path(&csv_path).unwrap_or_else(|e| panic!("{}: {e}", csv_path.display()));
    let headers = rdr.headers().expect("csv headers").clone();
    let line_id = headers
        .iter()
        .position(|h| h == "LineId")
        .expect("LineId column");
    let fields: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(_, h)| !IGNORED_COLUMNS.contains(h))
        .map(|(i, h)| (i, h.to_string()))
        .collect();
    assert!(
        fields.iter().any(|(_, h)| h == "Content"),
        "{system}: no Content column"
    );
    let records: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("csv record")).collect();
    assert_eq!(
        records.len(),
        lines.len(),
        "{system}: CSV rows vs log lines"
    );

    let mut plugin = testing::init::<GrokPlugin>(config(system)).expect("grok config");
    let events: Vec<Event> = lines.iter().map(|l| Event::with_message(*l)).collect();
    let mut results = Vec::with_capacity(events.len());
    for chunk in events.chunks(500) {
        results.extend(testing::run(&mut plugin, chunk));
    }

    let mut out = Outcome {
        lines: lines.len(),
        all_match: 0,
        unmatched: 0,
        examples: Vec::new(),
    };
    for (rec, (verdict, ev)) in records.iter().zip(&results) {
        assert_eq!(*verdict, Verdict::Keep);
        let id: usize = rec[line_id].trim().parse().expect("LineId");
        if !ev.attributes.contains_key(PATTERN_ATTRIBUTE) {
            out.unmatched += 1;
            if out.examples.len() < 5 {
                out.examples
                    .push(format!("line {id}: no match: {:?}", ev.message));
            }
            continue;
        }
        let mut ok = true;
        for (col, name) in &fields {
            let expected = rec[*col].trim();
            let actual = as_text(ev.attributes.get(name));
            if expected != actual {
                ok = false;
                if out.examples.len() < 5 {
                    out.examples.push(format!(
                        "line {id}: {name}: expected {expected:?}, got {actual:?}"
                    ));
                }
            }
        }
        if ok {
            out.all_match += 1;
        }
    }
    out
}

fn check(system: &str) {
    let dir = data_dir();
    let o = evaluate(&dir, system);
    let share = o.all_match as f64 / o.lines as f64;
    println!(
        "{system}: {}/{} lines with every field matching ({:.2}%), {} without a grok match",
        o.all_match,
        o.lines,
        share * 100.0,
        o.unmatched
    );
    for e in &o.examples {
        println!("  {e}");
    }
    assert!(
        share >= MIN_SHARE,
        "{system}: only {:.2}% of lines match the ground truth (need {:.0}%); first mismatches:\n{}",
        share * 100.0,
        MIN_SHARE * 100.0,
        o.examples.join("\n")
    );
}

#[test]
fn openssh() {
    check("OpenSSH");
}

#[test]
fn apache() {
    check("Apache");
}

#[test]
fn linux() {
    check("Linux");
}

#[test]
fn hdfs() {
    check("HDFS");
}
