//! What the benchmarks share: real log lines as events.
use std::path::PathBuf;
use weir::event::Event;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` events of real OpenSSH lines from loghub (`../shared/data/loghub`),
/// with the fields a Datadog agent sets.
pub fn events(n: usize) -> Vec<Event> {
    let path = repo().join("../shared/data/loghub/OpenSSH_2k.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the loghub samples)", path.display()));
    text.lines()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, line)| {
            let mut e = Event::from_message(line.to_string(), 1_700_000_000_000 + i as i64);
            e.host = Some(format!("web-{:03}", i % 200));
            e.service = Some("sshd".into());
            e.source = Some("openssh".into());
            e.status = Some("info".into());
            e.tags = vec!["env:prod".into(), format!("version:1.{}", i % 10)];
            e.attributes
                .insert("pid".into(), serde_json::json!(24200 + i % 50));
            e.attributes.insert(
                "network".into(),
                serde_json::json!({"client": {"port": 22}}),
            );
            e
        })
        .collect()
}
