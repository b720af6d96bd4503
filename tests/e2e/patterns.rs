//! Log patterns against the real binary: loghub's OpenSSH sample mined by a
//! running proxy, its top patterns' queries checked with `weir query` on the
//! same lines, then applied as exclusion rules through the admin API; and the
//! README's "Log patterns" example, as written.
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const KEY: (&str, &str) = ("DD-API-KEY", "agent-key");
const TOKEN: &str = "patterns-admin-token";
/// Top patterns whose queries become exclusion rules.
const TOP: usize = 4;

include!("../fixtures/loghub_csv.rs");

/// (Content, EventTemplate) of each line of loghub's OpenSSH sample.
fn openssh() -> Vec<(String, String)> {
    load_structured(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/loghub/OpenSSH_2k.log_structured.csv"
    )))
}

/// Datadog intake entries for the lines, ids `{prefix}-{line}`.
fn entries(lines: &[(String, String)], prefix: &str) -> Vec<Value> {
    lines
        .iter()
        .enumerate()
        .map(|(i, (m, _))| {
            json!({"message": m, "service": "sshd", "hostname": "LabSZ", "id": format!("{prefix}-{i}")})
        })
        .collect()
}

/// Sends the lines in requests of 500, in order (the miner sees them in order).
async fn send(weir: &Weir, lines: &[(String, String)], prefix: &str) {
    for chunk in entries(lines, prefix).chunks(500) {
        let r = post(
            &weir.url("/api/v2/logs"),
            &[KEY],
            serde_json::to_vec(chunk).unwrap(),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.text());
    }
}

/// The line numbers in `ids` (`a-17` -> 17).
fn lines_of<'a>(ids: impl Iterator<Item = &'a str>) -> BTreeSet<usize> {
    ids.map(|id| id.split_once('-').unwrap().1.parse().unwrap())
        .collect()
}

/// What the miner itself makes of the lines, in the order the proxy saw them:
/// each template's line numbers (the proxy mines every line: under its budget).
fn membership(lines: &[(String, String)]) -> HashMap<String, BTreeSet<usize>> {
    let mut miner: weir::patterns::Miner<Vec<usize>> =
        weir::patterns::Miner::new(weir::patterns::MinerLimits::default());
    for (i, (m, _)) in lines.iter().enumerate() {
        let slot = miner.add(m, Vec::new).slot;
        miner.get_mut(slot).unwrap().data.push(i);
    }
    miner
        .clusters()
        .map(|c| (c.template(), c.data.iter().copied().collect()))
        .collect()
}

/// The line numbers `weir query` finds for `query` in the NDJSON `input`.
fn queried(input: &std::path::Path, query: &str) -> BTreeSet<usize> {
    let (code, out, err) = weir_cli(&["query", query, "--input", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    lines_of(ids.iter().map(String::as_str))
}

async fn patterns(weir: &Weir, query: &str) -> Reply {
    admin(
        weir,
        "GET",
        &format!("/admin/patterns?{query}"),
        Some(TOKEN),
        json!(null),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_pattern_queries_exclude_exactly_their_patterns_events() {
    let lines = openssh();
    let (dd, addr) = FakeDatadog::start().await;
    let cfg = with_admin_token(&config(&addr.to_string(), "", ""), TOKEN)
        + "patterns:\n  events_per_second: 1000000\n";
    let mut weir = Weir::start(&cfg).await;
    send(&weir, &lines, "a").await;

    let r = patterns(&weir, &format!("tenant=acme&limit={TOP}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["tenant"], "acme");
    assert_eq!(report["sampled_fraction"], 1.0, "{report}");
    assert_eq!(report["events_seen_last_hour"], 2000);
    let top = report["patterns"].as_array().unwrap().clone();
    assert_eq!(top.len(), TOP);

    // Each query, run by `weir query` on the same lines, matches exactly its pattern's lines.
    let truth = membership(&lines);
    let input = weir.dir.path().join("openssh.ndjson");
    let ndjson: String = entries(&lines, "a")
        .iter()
        .map(|e| e.to_string() + "\n")
        .collect();
    std::fs::write(&input, ndjson).unwrap();
    let mut excluded = BTreeSet::new();
    for p in &top {
        let template = p["template"].as_str().unwrap();
        let members = &truth[template];
        assert_eq!(p["since_start"]["events"], members.len(), "{p}");
        assert_eq!(p["since_start"]["indexed"]["events"], members.len(), "{p}");
        assert_eq!(p["query_exact_on_examples"], true, "{p}");
        let query = p["query"].as_str().unwrap();
        assert_eq!(&queried(&input, query), members, "{query} ({template})");
        // The ground truth agrees where the miner found loghub's template.
        let labels: BTreeSet<&str> = members.iter().map(|&i| lines[i].1.as_str()).collect();
        println!(
            "{} lines  {template}  ->  {query}  (ground truth: {labels:?})",
            members.len()
        );
        assert!(excluded.is_disjoint(members), "patterns share no line");
        excluded.extend(members.iter().copied());
    }
    eventually(Duration::from_secs(30), "the first round indexed", || {
        (dd.count() == 2000).then_some(())
    })
    .await;

    // The queries as exclusion rules: the second round indexes everything else.
    for p in &top {
        let r = admin(
            &weir,
            "POST",
            "/admin/rules/acme",
            Some(TOKEN),
            json!({"name": format!("pattern-{}", p["id"]), "query": p["query"], "action": "archive_only"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    send(&weir, &lines, "b").await;
    let expected: BTreeSet<usize> = (0..lines.len()).filter(|i| !excluded.contains(i)).collect();
    eventually(Duration::from_secs(30), "the second round indexed", || {
        (dd.count() >= 2000 + expected.len()).then_some(())
    })
    .await;
    let rules = admin(&weir, "GET", "/admin/rules", Some(TOKEN), json!(null))
        .await
        .json();
    for (rule, p) in rules["tenants"]["acme"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&top)
    {
        let n = truth[p["template"].as_str().unwrap()].len();
        assert_eq!(
            (rule["matched"].as_u64(), rule["excluded"].as_u64()),
            (Some(n as u64), Some(n as u64)),
            "{rule}"
        );
    }
    assert!(weir.terminate().success(), "{}", weir.log());
    let indexed: Vec<String> = dd
        .take()
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .filter(|id| id.starts_with("b-"))
        .collect();
    assert_eq!(indexed.len(), expected.len(), "nothing indexed twice");
    assert_eq!(lines_of(indexed.iter().map(String::as_str)), expected);
    let (archived, _) = read_archive(&weir.archive_root());
    assert_eq!(archived.len(), 4000, "excluded events are archived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_splits_indexed_from_excluded_and_refuses_bad_calls() {
    let lines = openssh();
    let (_dd, addr) = FakeDatadog::start().await;
    let rules =
        "    exclusion_rules:\n      - {name: bye, query: '\"Bye Bye\"', action: archive_only}\n";
    let cfg = with_admin_token(&config(&addr.to_string(), "", rules), TOKEN);
    let weir = Weir::start(&cfg).await;
    send(&weir, &lines[..500], "a").await;
    let report = patterns(&weir, "tenant=acme&limit=1000").await.json();
    let all = report["patterns"].as_array().unwrap();
    let bye = all
        .iter()
        .find(|p| {
            p["template"]
                .as_str()
                .unwrap()
                .starts_with("Received disconnect")
        })
        .unwrap();
    let h = &bye["last_hour"];
    assert!(h["excluded"]["events"].as_u64().unwrap() > 0, "{bye}");
    assert_eq!(h["indexed"]["events"], 0, "{bye}");
    assert_eq!(
        bye["estimated_daily_bytes_saved"], 0,
        "excluded already: nothing to save"
    );
    let total: u64 = all
        .iter()
        .map(|p| p["last_hour"]["events"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 500);
    for (query, status, says) in [
        ("tenant=nobody", 404, "no tenant \"nobody\""),
        ("limit=3", 400, "`tenant` is required"),
        (
            "tenant=acme&limit=0",
            400,
            "`limit` must be a number from 1 to 1000",
        ),
        ("tenant=acme&limit=x", 400, "`limit` must be"),
        ("tenant=a%2Fb", 400, "letters, digits"),
    ] {
        let r = patterns(&weir, query).await;
        assert_eq!(r.status, status, "{query}: {}", r.text());
        assert!(r.error().contains(says), "{query}: {}", r.error());
    }
    let r = admin(
        &weir,
        "GET",
        "/admin/patterns?tenant=acme",
        None,
        json!(null),
    )
    .await;
    assert_eq!(r.status, 401, "the admin token is required");
    // The CLI: a table with the query under each pattern; --json as answered.
    let at = format!("127.0.0.1:{}", weir.admin);
    let (code, out, err) = weir_cli_env(
        &[
            "patterns", "--tenant", "acme", "--limit", "3", "--admin", &at,
        ],
        &[("WEIR_ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("tenant acme: "), "{out}");
    assert_eq!(out.matches("query: ").count(), 3, "{out}");
    let (code, out, _) = weir_cli_env(
        &["patterns", "--tenant", "acme", "--json", "--admin", &at],
        &[("WEIR_ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["tenant"],
        "acme"
    );
    let (code, _, err) = weir_cli_env(
        &["patterns", "--tenant", "nobody", "--admin", &at],
        &[("WEIR_ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no tenant"), "{err}");
}

/// The `nth` block fenced as ```kind (`yaml`, `sh`, or `` for output) after `heading` in README.md.
fn readme_block(heading: &str, kind: &str, nth: usize) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut open: Option<(&str, String)> = None;
    for line in readme[readme.find(heading).unwrap()..].lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(k)) => open = Some((k, String::new())),
            (Some(_), Some("")) => blocks.push(open.take().unwrap()),
            (Some((_, text)), _) => text.push_str(&(line.to_string() + "\n")),
            (None, None) => {}
        }
    }
    blocks
        .into_iter()
        .filter(|(k, _)| *k == kind)
        .nth(nth)
        .unwrap_or_else(|| panic!("no ```{kind} block {nth} after {heading}"))
        .1
}

/// The README's `patterns:` YAML runs, and its `weir patterns` line prints the
/// table it shows (the same patterns and queries) on loghub's OpenSSH lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_works_as_written() {
    let heading = "### Log patterns";
    let yaml = readme_block(heading, "yaml", 0);
    let script = readme_block(heading, "sh", 0);
    let shown = readme_block(heading, "", 0);
    let (_dd, addr) = FakeDatadog::start().await;
    let weir =
        Weir::start(&(with_admin_token(&config(&addr.to_string(), "", ""), TOKEN) + &yaml)).await;
    send(&weir, &openssh(), "a").await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir"))
        .parent()
        .unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script.replace("127.0.0.1:8089", &format!("127.0.0.1:{}", weir.admin)))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("WEIR_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{printed}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table as the README shows it, but for numbers that depend on timing.
    let words = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.contains("<*>") || l.contains("query: ") || l.starts_with("ID "))
            .map(|l| {
                l.split_whitespace()
                    .filter(|w| !w.starts_with(|c: char| c.is_ascii_digit()))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(
        words(&printed),
        words(&shown),
        "README shows:\n{shown}\nprinted:\n{printed}"
    );
    assert_eq!(printed.matches("query: ").count(), 3);
}
