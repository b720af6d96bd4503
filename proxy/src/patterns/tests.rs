use super::window::MINUTE_MS;
use super::*;
use crate::clock::ManualClock;
use crate::event::{Disposition, Event};

fn miner(max_patterns: usize) -> Miner<()> {
    Miner::new(MinerLimits {
        max_patterns,
        ..MinerLimits::default()
    })
}

fn template_of(m: &mut Miner<()>, message: &str) -> (u64, String) {
    let slot = m.add(message, || ()).slot;
    let c = m.get_mut(slot).unwrap();
    (c.id, c.template())
}

#[test]
fn messages_that_differ_in_values_share_a_template() {
    let mut m = miner(100);
    let (a, _) = template_of(
        &mut m,
        "Failed password for root from 10.0.0.1 port 22 ssh2",
    );
    let (b, t) = template_of(
        &mut m,
        "Failed password for admin from 10.0.0.2 port 4242 ssh2",
    );
    assert_eq!(a, b);
    assert_eq!(t, "Failed password for <*> from <*> port <*> ssh2");
    // Another token count is another pattern; so is another leading word.
    let (c, _) = template_of(
        &mut m,
        "Failed password for invalid user bob from 10.0.0.3 port 1 ssh2",
    );
    let (d, _) = template_of(
        &mut m,
        "Accepted password for root from 10.0.0.1 port 22 ssh2",
    );
    assert!(c != a && d != a && c != d);
    // Values inside tokens are masked, the text around them kept.
    let (_, t) = template_of(
        &mut m,
        "check pass; uid=0 rhost=173.234.31.186 user=root sshd[24200]:",
    );
    assert_eq!(t, "check pass; uid=<*> rhost=<*> user=root sshd[<*>]:");
    let (_, t) = template_of(
        &mut m,
        "check pass; uid=0 rhost=10.1.1.1 user=admin sshd[1]:",
    );
    assert_eq!(t, "check pass; uid=<*> rhost=<*> user=<*> sshd[<*>]:");
    assert_eq!(m.len(), 4);
}

#[test]
fn dissimilar_messages_of_one_shape_stay_apart() {
    let mut m = miner(100);
    let (a, _) = template_of(&mut m, "connection opened to db");
    let (b, _) = template_of(&mut m, "connection refused by firewall");
    assert_ne!(a, b, "another second token routes to another leaf");
    let (c, t) = template_of(&mut m, "connection opened to cache");
    assert_eq!(a, c);
    assert_eq!(t, "connection opened to <*>");
}

#[test]
fn the_pattern_cap_evicts_the_least_recent_and_prunes_the_tree() {
    let mut m = miner(3);
    let words = ["alpha", "bravo", "charlie", "delta", "echo"];
    let (first, _) = template_of(&mut m, "alpha one two");
    template_of(&mut m, "bravo one two three");
    template_of(&mut m, "charlie one");
    // alpha is seen again, so bravo is now the least recent.
    template_of(&mut m, "alpha one two");
    template_of(&mut m, "delta x y z w");
    assert_eq!(m.len(), 3);
    assert_eq!(m.evicted, 1);
    let ids: Vec<String> = m.clusters().map(|c| c.template()).collect();
    assert!(!ids.contains(&"bravo one two three".to_string()), "{ids:?}");
    assert!(m.clusters().any(|c| c.id == first));
    // Thousands of distinct shapes later, still three, and the tree holds no dead branches.
    for i in 0..2000 {
        let msg = format!("{} {}", words[i % 5], "w ".repeat(i % 40));
        template_of(&mut m, &msg);
    }
    assert_eq!(m.len(), 3);
    assert!(m.tree_nodes() <= 3 * 3, "{} tree nodes", m.tree_nodes());
}

#[test]
fn long_messages_are_cut_at_whitespace_and_end_in_a_wildcard() {
    let limits = MinerLimits {
        max_tokens: 4,
        max_message_bytes: 20,
        ..MinerLimits::default()
    };
    let (t, used) = tokenize("a b c d e f", &limits);
    assert_eq!(t, ["a", "b", "c", "d", "<*>"]);
    assert_eq!(used, 7);
    let (t, used) = tokenize("abcdefgh ijklmnop qrstuvwx", &limits);
    assert_eq!(t, ["abcdefgh", "ijklmnop", "<*>"]);
    assert_eq!(used, 17);
    let (t, used) = tokenize("", &limits);
    assert!(t.is_empty() && used == 0);
}

fn config(per_second: u64) -> PatternsConfig {
    PatternsConfig {
        events_per_second: per_second,
        ..PatternsConfig::default()
    }
}

fn batch(messages: &[String], d: Disposition) -> Batch {
    let events = messages
        .iter()
        .map(|m| Event::from_message(m.clone(), 0))
        .collect();
    let mut b = Batch::for_test("t", 0, events);
    b.dispositions = vec![d; messages.len()];
    b
}

fn msgs(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix} user{i:04} took {i} ms"))
        .collect()
}

#[test]
fn counts_bytes_and_dispositions_per_window_and_per_day() {
    let clock = ManualClock::at(10 * 60 * MINUTE_MS);
    let t = TenantPatterns::new("t", &config(100_000), clock.clone());
    t.watch(&batch(&msgs("GET /a", 100), Disposition::Index));
    t.watch(&batch(&msgs("GET /a", 50), Disposition::ArchiveOnly));
    t.watch(&batch(&msgs("GET /a", 10), Disposition::Drop));
    t.watch(&batch(&msgs("POST /b", 20), Disposition::Index));
    let one = event_bytes(&Event::from_message("GET /a user0000 took 0 ms".into(), 0));
    clock.advance_ms(30 * MINUTE_MS);
    let r = t.report(10);
    assert_eq!(r.patterns.len(), 2);
    let top = &r.patterns[0];
    assert_eq!(top.template, "GET /a <*> took <*> ms");
    assert_eq!(top.query.as_deref(), Some("\"GET /a\" took ms"), "{top:?}");
    assert!(top.query_exact_on_examples, "{top:?}");
    let h = top.last_hour;
    assert_eq!(
        (h.indexed.events, h.excluded.events, h.dropped.events),
        (100, 50, 10)
    );
    assert!(h.indexed.bytes >= 100 * one - 300 && h.indexed.bytes <= 100 * one + 300);
    assert_eq!(top.last_minute.events, 0, "30 minutes ago");
    assert_eq!(top.since_start.events, 160);
    assert!((top.share_of_events - 160.0 / 180.0).abs() < 1e-9);
    assert!((top.indexed_fraction - 100.0 / 160.0).abs() < 1e-9);
    // 30 minutes of history: a day is 48 of them; only indexed events save anything.
    assert_eq!(top.estimated_daily_events, 160 * 48);
    assert_eq!(top.estimated_daily_events_saved, 100 * 48);
    assert_eq!(top.estimated_daily_bytes_saved, h.indexed.bytes * 48);
    assert_eq!(r.sampled_fraction, 1.0);
    assert_eq!(top.example, "GET /a user0000 took 0 ms");
    // An hour and a minute later the window is empty; the totals stay.
    clock.advance_ms(31 * MINUTE_MS);
    let r = t.report(10);
    assert_eq!(r.patterns[0].last_hour.events, 0);
    assert_eq!(r.patterns[0].since_start.events, 160);
}

#[test]
fn over_the_budget_events_are_counted_and_the_sample_scaled() {
    let clock = ManualClock::at(0);
    let t = TenantPatterns::new("t", &config(10), clock.clone());
    t.watch(&batch(&msgs("GET /a", 100), Disposition::Index));
    // The budget for this second is spent: counted only.
    t.watch(&batch(&msgs("GET /a", 100), Disposition::Index));
    let s = t.state.lock().unwrap();
    assert_eq!(s.mined_total, 10);
    drop(s);
    clock.advance_ms(1000);
    t.watch(&batch(&msgs("GET /a", 100), Disposition::Index));
    let s = t.state.lock().unwrap();
    assert_eq!((s.seen_total, s.mined_total), (300, 20));
    drop(s);
    let r = t.report(5);
    assert!((r.sampled_fraction - 20.0 / 300.0).abs() < 1e-9);
    assert_eq!(
        r.patterns[0].last_hour.events, 300,
        "scaled by seen / mined"
    );
}

#[test]
fn a_busy_miner_is_never_waited_for() {
    let t = TenantPatterns::new("t", &config(1000), ManualClock::at(0));
    let held = t.state.lock().unwrap();
    t.watch(&batch(&msgs("GET /a", 7), Disposition::Index));
    drop(held);
    assert_eq!(t.unseen.load(Ordering::Relaxed), 7);
    t.watch(&batch(&msgs("GET /a", 3), Disposition::Index));
    let s = t.state.lock().unwrap();
    assert_eq!((s.seen_total, s.mined_total), (10, 3));
}

/// `n` in base 26, as letters: a word without digits (which masking keeps).
fn letters(mut n: usize) -> String {
    let mut s = String::new();
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

#[test]
fn memory_stays_bounded_under_a_flood_of_unique_messages() {
    let cfg = PatternsConfig {
        max_patterns_per_tenant: 50,
        ..config(1_000_000)
    };
    let t = TenantPatterns::new("t", &cfg, ManualClock::at(0));
    for r in 0..20 {
        // Words no two messages share: each is a pattern of its own.
        let unique: Vec<String> = (0..500)
            .map(|i| {
                let n = r * 500 + i;
                format!(
                    "{} {} {}",
                    letters(n),
                    letters(n + 10_000),
                    "z".repeat(5000)
                )
            })
            .collect();
        t.watch(&batch(&unique, Disposition::Index));
    }
    let s = t.state.lock().unwrap();
    assert_eq!(s.miner.len(), 50);
    assert!(s.miner.evicted > 9000);
    for c in s.miner.clusters() {
        let bytes: usize = c.tokens.iter().map(|t| t.len() + 1).sum();
        assert!(bytes <= 1024 + 4, "{bytes}");
        assert!(c.data.examples.iter().all(|e| e.len() <= 1024));
    }
}

#[test]
fn patterns_report_only_known_tenants() {
    let p = Patterns::new(&config(100), ManualClock::at(0));
    let t = p.tenant("acme");
    assert!(Arc::ptr_eq(&t, &p.tenant("acme")));
    assert!(p.report("acme", 10).unwrap().patterns.is_empty());
    assert!(p.report("other", 10).is_none());
}

#[test]
fn the_report_ranks_by_bytes_and_keeps_to_its_limit() {
    let t = TenantPatterns::new("t", &config(100_000), ManualClock::at(0));
    // Fewer events but longer ones: more bytes.
    let long: Vec<String> = (0..10)
        .map(|i| format!("upload {i} done {}", "x".repeat(900)))
        .collect();
    t.watch(&batch(&msgs("GET /a", 100), Disposition::Index));
    t.watch(&batch(&long, Disposition::Index));
    let r = t.report(1);
    assert_eq!(r.patterns.len(), 1);
    assert!(
        r.patterns[0].template.starts_with("upload <*> done"),
        "{:?}",
        r.patterns[0]
    );
    assert_eq!(r.live_patterns, 2);
    let r = t.report(10);
    assert_eq!(r.patterns.len(), 2);
    assert!(r.patterns[0].last_hour.bytes > r.patterns[1].last_hour.bytes);
    assert!(r.patterns[0].last_hour.events < r.patterns[1].last_hour.events);
}
