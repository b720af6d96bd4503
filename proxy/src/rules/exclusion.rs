//! Exclusion rules: an ordered list per tenant after the global ones. The
//! first enabled rule whose query matches an event decides: with probability
//! `sample_rate` the event is kept from the index (`archive_only`, the
//! default) or dropped (`drop`); otherwise it is indexed. Sampling hashes the
//! event's content, so replicas agree and replays repeat. Rules change at run
//! time (admin API) by swapping one scope's immutable list.
//!
//! Each tenant's stage ([`TenantRules`]) holds the global list and its own;
//! the registry ([`ExclusionRules`]) holds every list too, for the admin API.
use super::query::{Query, QueryError};
use crate::config::{ExclusionAction, ExclusionRuleConfig};
use crate::event::stage::{Rejection, Stage};
use crate::event::{Batch, Disposition, Event, Why};
use crate::telemetry::METRICS;
use std::hash::Hasher;
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Rule {
    pub config: ExclusionRuleConfig,
    query: Query,
    /// Events whose content hash is below this are excluded.
    threshold: u64,
}

impl Rule {
    pub fn compile(config: ExclusionRuleConfig) -> Result<Rule, QueryError> {
        let query = Query::parse(&config.query)?;
        let rate = config.sample_rate.clamp(0.0, 1.0);
        let threshold = if rate >= 1.0 {
            u64::MAX
        } else {
            (rate * u64::MAX as f64) as u64
        };
        Ok(Rule {
            config,
            query,
            threshold,
        })
    }

    fn excludes(&self, ev: &Event) -> bool {
        self.threshold == u64::MAX || (self.threshold > 0 && content_hash(ev) < self.threshold)
    }
}

/// Rules are the same when they are configured the same (the query compiles one way).
impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.config == other.config
    }
}

/// A stable hash of what makes an event itself (same input, same verdict, on every replica).
pub fn content_hash(ev: &Event) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.write_i64(ev.timestamp);
    for part in [
        Some(ev.message.as_str()),
        ev.host.as_deref(),
        ev.service.as_deref(),
        ev.source.as_deref(),
        ev.status.as_deref(),
    ] {
        let s = part.unwrap_or("");
        h.write_usize(s.len());
        h.write(s.as_bytes());
    }
    h.finish()
}

/// Which list a rule belongs to ([`ExclusionRules::scope`] makes one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Global,
    /// A tenant of the rules, by name.
    Tenant(String),
}

/// A view of every rule at one moment (the admin API lists it).
pub struct RuleSet {
    pub global: Vec<Arc<Rule>>,
    /// Each tenant's name and rules, in the config's order.
    pub tenants: Vec<(String, Vec<Arc<Rule>>)>,
}

/// One scope's rules: an immutable list, swapped whole.
#[derive(Default)]
pub struct RuleList(RwLock<Arc<Vec<Arc<Rule>>>>);

impl RuleList {
    fn new(rules: Vec<Arc<Rule>>) -> Arc<RuleList> {
        Arc::new(RuleList(RwLock::new(Arc::new(rules))))
    }

    fn current(&self) -> Arc<Vec<Arc<Rule>>> {
        self.0.read().unwrap().clone()
    }
}

/// Every scope's rules, for the admin API.
pub struct ExclusionRules {
    global: Arc<RuleList>,
    tenants: Vec<(String, Arc<RuleList>)>,
}

/// The exclusion-rule stage of one tenant: the global rules, then its own.
pub struct TenantRules {
    global: Arc<RuleList>,
    own: Arc<RuleList>,
}

/// A rule that did not compile: where it is and why.
#[derive(Debug)]
pub struct RuleError {
    pub rule: String,
    pub error: QueryError,
}

fn compile_all(configs: &[ExclusionRuleConfig]) -> Result<Vec<Arc<Rule>>, RuleError> {
    configs
        .iter()
        .map(|c| {
            Rule::compile(c.clone())
                .map(Arc::new)
                .map_err(|error| RuleError {
                    rule: c.name.clone(),
                    error,
                })
        })
        .collect()
}

impl ExclusionRules {
    /// The global rules (compiled), and no tenant yet.
    pub fn with_global(global: Vec<Arc<Rule>>) -> ExclusionRules {
        ExclusionRules {
            global: RuleList::new(global),
            tenants: Vec::new(),
        }
    }

    /// Adds tenant `name` with its rules (compiled) and returns its stage.
    pub fn add(&mut self, name: &str, rules: Vec<Arc<Rule>>) -> TenantRules {
        let own = RuleList::new(rules);
        self.tenants.push((name.to_string(), own.clone()));
        TenantRules {
            global: self.global.clone(),
            own,
        }
    }

    pub fn snapshot(&self) -> RuleSet {
        RuleSet {
            global: self.global.current().to_vec(),
            tenants: self
                .tenants
                .iter()
                .map(|(n, l)| (n.clone(), l.current().to_vec()))
                .collect(),
        }
    }

    /// The scope `name` names: `global`, or one of the tenants.
    pub fn scope(&self, name: &str) -> Option<Scope> {
        if name == "global" {
            return Some(Scope::Global);
        }
        self.tenants
            .iter()
            .any(|(n, _)| n == name)
            .then(|| Scope::Tenant(name.to_string()))
    }

    fn list(&self, scope: &Scope) -> &Arc<RuleList> {
        match scope {
            Scope::Global => &self.global,
            Scope::Tenant(name) => {
                let found = self.tenants.iter().find(|(n, _)| n == name);
                &found.expect("scopes name tenants of these rules").1
            }
        }
    }

    /// The rule configs of one scope, as they are now.
    pub fn configs(&self, scope: &Scope) -> Vec<ExclusionRuleConfig> {
        let rules = self.list(scope).current();
        rules.iter().map(|r| r.config.clone()).collect()
    }

    /// Replaces one scope's rules after compiling all of them; on error nothing changes.
    pub fn replace(&self, scope: &Scope, configs: &[ExclusionRuleConfig]) -> Result<(), RuleError> {
        let compiled = compile_all(configs)?;
        *self.list(scope).0.write().unwrap() = Arc::new(compiled);
        Ok(())
    }
}

impl Stage for TenantRules {
    fn name(&self) -> &'static str {
        "exclusion_rules"
    }

    fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
        let global = self.global.current();
        let tenant_rules = self.own.current();
        if global.is_empty() && tenant_rules.is_empty() {
            return Ok(());
        }
        // Per rule: (matched, excluded); metrics are updated once per batch.
        let n_rules = global.len() + tenant_rules.len();
        let mut counts = vec![(0u64, 0u64); n_rules];
        let why = &mut batch.why;
        for (n, (ev, disp)) in batch
            .events
            .iter()
            .zip(batch.dispositions.iter_mut())
            .enumerate()
        {
            if *disp != Disposition::Index {
                continue;
            }
            let first = global
                .iter()
                .chain(tenant_rules.iter())
                .enumerate()
                .find(|(_, r)| r.config.enabled && r.query.matches(ev));
            if let Some((i, rule)) = first {
                counts[i].0 += 1;
                let excluded = rule.excludes(ev);
                if excluded {
                    counts[i].1 += 1;
                    *disp = match rule.config.action {
                        ExclusionAction::ArchiveOnly => Disposition::ArchiveOnly,
                        ExclusionAction::Drop => Disposition::Drop,
                    };
                }
                Batch::explain(why, n, || Why::Rule {
                    name: rule.config.name.clone(),
                    kept: !excluded,
                });
            }
        }
        // Counted once the batch is taken (commit): a refused request counts nothing.
        for (rule, (matched, excluded)) in global.iter().chain(tenant_rules.iter()).zip(counts) {
            if matched > 0 {
                batch
                    .charges
                    .rules
                    .push((rule.config.name.clone(), matched, excluded));
            }
        }
        Ok(())
    }

    fn commit(&self, batch: &Batch) {
        let tenant: &str = &batch.meta.tenant;
        for (rule, matched, excluded) in &batch.charges.rules {
            let labels = [tenant, rule.as_str()];
            METRICS
                .rule_matched
                .with_label_values(&labels)
                .inc_by(*matched);
            METRICS
                .rule_excluded
                .with_label_values(&labels)
                .inc_by(*excluded);
            METRICS
                .rule_kept
                .with_label_values(&labels)
                .inc_by(matched - excluded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, query: &str, rate: f64, action: ExclusionAction) -> ExclusionRuleConfig {
        ExclusionRuleConfig {
            name: name.into(),
            query: query.into(),
            sample_rate: rate,
            action,
            enabled: true,
        }
    }

    fn batch(n: usize, status: &str, tenant: usize) -> Batch {
        let events = (0..n)
            .map(|i| Event {
                message: format!("event {i}"),
                status: Some(status.into()),
                service: Some("web".into()),
                timestamp: i as i64,
                ..Default::default()
            })
            .collect();
        Batch::for_test(&format!("t{tenant}"), 0, events)
    }

    /// Rules of `global` and of each tenant (`t0`, `t1`...), as the YAML gives them.
    impl ExclusionRules {
        fn new(
            global: &[ExclusionRuleConfig],
            tenants: &[(String, Vec<ExclusionRuleConfig>)],
        ) -> Result<ExclusionRules, RuleError> {
            let mut rules = ExclusionRules::with_global(compile_all(global)?);
            for (name, configs) in tenants {
                rules.add(name, compile_all(configs)?);
            }
            Ok(rules)
        }

        /// Runs `batch` through its tenant's stage.
        fn process(&self, batch: &mut Batch) -> Result<(), Rejection> {
            let scope = self
                .scope(&batch.meta.tenant)
                .expect("a tenant of these rules");
            let stage = TenantRules {
                global: self.global.clone(),
                own: self.list(&scope).clone(),
            };
            stage.process(batch)
        }
    }

    fn count(b: &Batch, d: Disposition) -> usize {
        b.dispositions.iter().filter(|x| **x == d).count()
    }

    #[test]
    fn sampling_excludes_about_the_rate_and_is_deterministic() {
        let rules = ExclusionRules::new(
            &[],
            &[(
                "t0".into(),
                vec![rule(
                    "debug",
                    "status:debug",
                    0.9,
                    ExclusionAction::ArchiveOnly,
                )],
            )],
        )
        .unwrap();
        let mut b = batch(10_000, "debug", 0);
        rules.process(&mut b).unwrap();
        let kept = count(&b, Disposition::Index);
        // Binomial(10000, 0.1): sd = 30; 6 sd either side.
        assert!((820..=1180).contains(&kept), "kept {kept}");
        assert_eq!(count(&b, Disposition::ArchiveOnly), 10_000 - kept);
        let mut again = batch(10_000, "debug", 0);
        rules.process(&mut again).unwrap();
        assert_eq!(
            again.dispositions, b.dispositions,
            "same events, same verdicts"
        );
        // Non-matching events are untouched.
        let mut info = batch(100, "info", 0);
        rules.process(&mut info).unwrap();
        assert_eq!(count(&info, Disposition::Index), 100);
    }

    #[test]
    fn global_first_then_tenant_first_match_wins_and_drop() {
        let global = vec![rule(
            "keep-errors",
            "status:error",
            0.0,
            ExclusionAction::Drop,
        )];
        let tenant = vec![rule("drop-web", "service:web", 1.0, ExclusionAction::Drop)];
        let rules =
            ExclusionRules::new(&global, &[("t0".into(), tenant), ("t1".into(), vec![])]).unwrap();
        let mut errors = batch(10, "error", 0);
        rules.process(&mut errors).unwrap();
        assert_eq!(
            count(&errors, Disposition::Index),
            10,
            "the global rule matched first and samples nothing out"
        );
        let mut infos = batch(10, "info", 0);
        rules.process(&mut infos).unwrap();
        assert_eq!(count(&infos, Disposition::Drop), 10);
        let mut other = batch(10, "info", 1);
        rules.process(&mut other).unwrap();
        assert_eq!(
            count(&other, Disposition::Index),
            10,
            "tenant rules stay with their tenant"
        );
    }

    #[test]
    fn replace_swaps_atomically_and_refuses_bad_queries() {
        let rules = ExclusionRules::new(&[], &[("t0".into(), vec![])]).unwrap();
        let scope = rules.scope("t0").unwrap();
        rules
            .replace(
                &scope,
                &[rule("all", "*", 1.0, ExclusionAction::ArchiveOnly)],
            )
            .unwrap();
        let mut b = batch(5, "info", 0);
        rules.process(&mut b).unwrap();
        assert_eq!(count(&b, Disposition::ArchiveOnly), 5);
        let err = rules
            .replace(
                &scope,
                &[rule(
                    "bad",
                    "service:(web",
                    1.0,
                    ExclusionAction::ArchiveOnly,
                )],
            )
            .unwrap_err();
        assert_eq!(err.rule, "bad");
        assert_eq!(
            rules.configs(&scope)[0].name,
            "all",
            "the old rules keep running"
        );
        let mut disabled = rule("all", "*", 1.0, ExclusionAction::ArchiveOnly);
        disabled.enabled = false;
        rules.replace(&scope, &[disabled]).unwrap();
        let mut b = batch(5, "info", 0);
        rules.process(&mut b).unwrap();
        assert_eq!(count(&b, Disposition::Index), 5);
    }
}
