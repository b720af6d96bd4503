//! The README's first-run example, run as written: `weir run` on the embedded
//! default, then the README's own shell lines (curl, tail, find | zcat), taken
//! from README.md itself so that the docs cannot drift from the binary.
use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shell block that follows `marker` in README.md.
fn readme_block(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let after = &readme[readme
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in README"))..];
    let start = after.find("```sh\n").unwrap() + 6;
    let end = start + after[start..].find("```").unwrap();
    after[start..end].to_string()
}

fn sh(cwd: &std::path::Path, script: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_run_example_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    // `cargo run --release -- run` is this binary with `run` and no config.
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("weir.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while get("http://127.0.0.1:8089/readyz").await.map(|r| r.status) != Ok(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not ready: {}",
            std::fs::read_to_string(dir.path().join("weir.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.path().join("weir.log")).unwrap();
    assert!(
        log.contains("weir-demo-key")
            && log.contains("curl -X POST http://127.0.0.1:8088/api/v2/logs"),
        "the first run shows the demo key and a curl line: {log}"
    );

    let block = readme_block("Send a log:");
    let lines: Vec<&str> = block.lines().collect();
    // The curl command (continued lines), as written.
    let curl_end = lines.iter().position(|l| l.starts_with("# ->")).unwrap();
    let curl = lines[..curl_end].join("\n");
    let (ok, out) = sh(dir.path(), &format!("{curl} -s -w ' %{{http_code}}'"));
    assert!(ok && out.trim_end().ends_with("{} 202"), "{out}");
    // `tail -f weir-data/sink.ndjson`: forwarded within a second.
    let sink = lines.iter().find(|l| l.starts_with("tail -f")).unwrap();
    let path = sink.split_whitespace().nth(2).unwrap();
    eventually(Duration::from_secs(5), "the event in the sink", || {
        std::fs::read_to_string(dir.path().join(path))
            .ok()
            .filter(|t| t.contains("hello from curl"))
    })
    .await;
    let metrics = lines.iter().find(|l| l.contains("/metrics")).unwrap();
    let (ok, out) = sh(dir.path(), metrics);
    assert!(ok && out.contains("weir_received_events_total{"), "{out}");
    // `find ... | xargs zcat`: archived within 10 s (or on Ctrl-C).
    unsafe { libc::kill(weir.id() as i32, libc::SIGINT) };
    assert!(weir.wait().unwrap().success());
    let archive = lines.iter().find(|l| l.starts_with("find ")).unwrap();
    let archive = archive.split('#').next().unwrap();
    let (ok, out) = sh(dir.path(), archive);
    assert!(
        ok && out.contains("hello from curl") && out.contains("\"ddsource\":\"curl\""),
        "{out}"
    );
}
