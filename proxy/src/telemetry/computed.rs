//! Gauges read from the state they describe at each scrape, instead of being
//! set when that state changes: a state that changes by the passing of time
//! (an ejection running out) cannot leave the gauge behind.
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use std::sync::{Arc, RwLock};

/// What a computed gauge reads: each series' label values and value.
pub type Source = Box<dyn Fn() -> Vec<(Vec<String>, i64)> + Send + Sync>;

/// Clones share the source (the registry holds one, `Metrics` another).
#[derive(Clone)]
pub struct ComputedGauge {
    opts: Opts,
    labels: Vec<String>,
    desc: Desc,
    source: Arc<RwLock<Option<Source>>>,
}

impl ComputedGauge {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> ComputedGauge {
        let opts = Opts::new(name, help);
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            labels.clone(),
            Default::default(),
        )
        .expect("valid metric");
        ComputedGauge {
            opts,
            labels,
            desc,
            source: Arc::new(RwLock::new(None)),
        }
    }

    /// Replaces where the series are read from (none until set: no series).
    pub fn set_source(&self, source: Source) {
        *self.source.write().unwrap() = Some(source);
    }

    /// The series as a scrape would see them now.
    pub fn read(&self) -> Vec<(Vec<String>, i64)> {
        self.source
            .read()
            .unwrap()
            .as_ref()
            .map_or_else(Vec::new, |f| f())
    }
}

impl Collector for ComputedGauge {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        let vec = IntGaugeVec::new(self.opts.clone(), &labels).expect("valid metric");
        for (values, v) in self.read() {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            vec.with_label_values(&values).set(v);
        }
        vec.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_at_each_scrape() {
        let g = ComputedGauge::new("t_up", "help", &["backend"]);
        let r = prometheus::Registry::new();
        r.register(Box::new(g.clone())).unwrap();
        assert!(r.gather().is_empty(), "no source: no series");
        let state = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let s = state.clone();
        g.set_source(Box::new(move || {
            vec![(
                vec!["a".into()],
                s.load(std::sync::atomic::Ordering::SeqCst),
            )]
        }));
        let value = |r: &prometheus::Registry| r.gather()[0].get_metric()[0].get_gauge().value();
        assert_eq!(value(&r), 0.0);
        state.store(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(value(&r), 1.0, "no call needed for the change to show");
    }
}
