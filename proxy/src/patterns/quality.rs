//! Template quality on the loghub samples (../shared/data/loghub), against
//! their structured ground truth (`EventTemplate` per line), measured as in
//! the Drain paper and the loghub benchmark:
//!
//! * grouping accuracy: a message is correctly grouped when its mined cluster
//!   holds exactly the messages of its ground-truth template;
//! * query exactness: the share of messages whose pattern's exclusion-rule
//!   query matches exactly the messages of that pattern among the 2,000.
//!
//! The test prints both per dataset and fails if either drops below a floor
//! the miner meets with a margin (`cargo test -p weir --lib patterns::quality
//! -- --nocapture` shows the figures).
use super::query::{build, View};
use super::{Miner, MinerLimits, EXAMPLES};
use crate::event::Event;
use crate::rules::query::Query;
use std::collections::HashMap;

include!("../../../tests/fixtures/loghub_csv.rs");

pub(crate) fn loghub_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/loghub")
}

struct Figures {
    grouping_accuracy: f64,
    query_exactness: f64,
    patterns: usize,
    truth: usize,
}

fn measure(lines: &[(String, String)]) -> Figures {
    let mut miner: Miner<Vec<Box<str>>> = Miner::new(MinerLimits {
        max_patterns: 100_000,
        ..MinerLimits::default()
    });
    // Slots are stable without evictions: a line's cluster is its slot.
    let mut of_line = Vec::with_capacity(lines.len());
    for (content, _) in lines {
        let added = miner.add(content, Vec::new);
        let c = miner.get_mut(added.slot).unwrap();
        if c.data.len() < EXAMPLES {
            c.data.push(content[..added.used].into());
        }
        of_line.push(c.id);
    }
    let mut mined: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut truth: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (_, t)) in lines.iter().enumerate() {
        mined.entry(of_line[i]).or_default().push(i);
        truth.entry(t.as_str()).or_default().push(i);
    }
    let correct: usize = truth
        .values()
        .filter(|members| mined[&of_line[members[0]]] == **members)
        .map(|m| m.len())
        .sum();
    let clusters: Vec<_> = miner.clusters().collect();
    let views: Vec<View> = clusters
        .iter()
        .map(|c| View {
            id: c.id,
            tokens: &c.tokens,
            examples: &c.data,
        })
        .collect();
    let events: Vec<Event> = lines
        .iter()
        .map(|(m, _)| Event::from_message(m.clone(), 0))
        .collect();
    let mut exact = 0;
    for (i, c) in clusters.iter().enumerate() {
        let Some(q) = build(&views, i).query else {
            continue;
        };
        let q = Query::parse(&q).unwrap();
        let matched: Vec<usize> = (0..events.len())
            .filter(|&j| q.matches(&events[j]))
            .collect();
        if matched == mined[&c.id] {
            exact += matched.len();
        }
    }
    Figures {
        grouping_accuracy: correct as f64 / lines.len() as f64,
        query_exactness: exact as f64 / lines.len() as f64,
        patterns: clusters.len(),
        truth: truth.len(),
    }
}

#[test]
fn templates_group_the_loghub_samples_like_their_ground_truth() {
    // Floors a little under what the miner measured (README, "Log patterns").
    let floors = [
        ("Android", 0.88, 0.97),
        ("Apache", 0.97, 0.97),
        ("HDFS", 0.96, 0.96),
        ("HealthApp", 0.74, 0.76),
        ("Linux", 0.65, 0.96),
        ("OpenSSH", 0.75, 0.96),
    ];
    let mut failed = Vec::new();
    for (name, ga_floor, exact_floor) in floors {
        let path = loghub_dir().join(format!("{name}_2k.log_structured.csv"));
        let lines = load_structured(&path);
        assert_eq!(lines.len(), 2000, "{name}");
        let f = measure(&lines);
        println!(
            "{name:<10} grouping accuracy {:.3}  query exactness {:.3}  patterns {} (ground truth {})",
            f.grouping_accuracy, f.query_exactness, f.patterns, f.truth
        );
        if f.grouping_accuracy < ga_floor || f.query_exactness < exact_floor {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "below the floor: {failed:?}");
}
