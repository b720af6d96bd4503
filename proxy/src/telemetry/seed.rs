//! Series that exist from the start with 0: a counter that appears only at
//! its first increment hides that increment from `increase()` and `rate()`
//! (there is no earlier sample to compare with), so the first burst of
//! errors would not fire an alert. Every label set the config names is
//! created here; label values only known when they happen (an HTTP status,
//! a refusal reason, a plugin's own counter names) appear at first use.
use super::labels::{DropReason, IntakeOutcome, PluginErrorReason, SendOutcome};
use super::METRICS;
use crate::config::Config;
use crate::event::Intake;

/// Creates the series of `config`'s tenants, backends, rules, plugins and
/// listeners (existing ones keep their values). Run at start and at each reload.
pub fn seed(config: &Config) {
    let m = &*METRICS;
    for task in super::faults::Task::ALL {
        m.task_failures.with_label_values(&[task.as_str()]);
    }
    for b in &config.backends {
        let name = b.name.as_str();
        for outcome in SendOutcome::ALL {
            m.backend_requests
                .with_label_values(&[name, outcome.as_str()]);
            m.backend_latency
                .with_label_values(&[name, outcome.as_str()]);
        }
        m.backend_retries.with_label_values(&[name]);
        m.inflight_batches.with_label_values(&[name]);
    }
    for intake in Intake::ALL {
        for outcome in IntakeOutcome::ALL {
            m.intake_latency
                .with_label_values(&[intake.as_str(), outcome.as_str()]);
        }
    }
    for l in &config.listeners {
        m.refused_connections
            .with_label_values(&[&l.name, "per_ip_limit"]);
    }
    for l in config.listeners.iter().filter(|l| l.tls.is_some()) {
        m.tls_handshake_failures.with_label_values(&[&l.name]);
        for outcome in ["ok", "error"] {
            m.tls_reloads.with_label_values(&[&l.name, outcome]);
        }
    }
    for t in &config.tenants {
        seed_tenant(config, t);
    }
}

fn seed_tenant(config: &Config, t: &crate::config::TenantConfig) {
    let m = &*METRICS;
    let tenant = t.name.as_str();
    for intake in Intake::ALL {
        let labels = [tenant, intake.as_str()];
        m.received_events.with_label_values(&labels);
        m.received_bytes.with_label_values(&labels);
        m.accepted_requests.with_label_values(&labels);
    }
    m.truncated_events.with_label_values(&[tenant]);
    m.rate_limited_requests.with_label_values(&[tenant]);
    // Every backend the tenant's route may send to, in order of preference.
    let route: Vec<String> = config
        .route_tiers(t)
        .into_iter()
        .flat_map(|(_, tier)| tier)
        .collect();
    for backend in &route {
        let labels = [tenant, backend.as_str()];
        m.forwarded_events.with_label_values(&labels);
        m.forwarded_bytes.with_label_values(&labels);
        m.pending_events.with_label_values(&labels);
        for reason in DropReason::ALL {
            m.backend_dropped_events
                .with_label_values(&[tenant, backend, reason.as_str()]);
        }
        for to in route.iter().filter(|to| *to != backend) {
            m.backend_failovers
                .with_label_values(&[tenant, backend, to]);
        }
    }
    if t.archive.as_ref().unwrap_or(&config.archive).enabled {
        m.archived_events.with_label_values(&[tenant]);
        m.archived_bytes.with_label_values(&[tenant]);
        m.archive_objects.with_label_values(&[tenant]);
        m.archive_errors.with_label_values(&[tenant]);
    }
    for rule in config.exclusion_rules.iter().chain(&t.exclusion_rules) {
        let labels = [tenant, rule.name.as_str()];
        m.rule_matched.with_label_values(&labels);
        m.rule_excluded.with_label_values(&labels);
        m.rule_kept.with_label_values(&labels);
    }
    if t.daily_quota.is_some() {
        use crate::config::QuotaAction::*;
        for action in [ArchiveOnly, Drop, Reject] {
            m.over_quota_events
                .with_label_values(&[tenant, action.as_str()]);
        }
    }
    for p in &t.plugins {
        let labels = [tenant, p.name.as_str()];
        m.plugin_calls.with_label_values(&labels);
        m.plugin_duration.with_label_values(&labels);
        for reason in PluginErrorReason::ALL {
            m.plugin_errors
                .with_label_values(&[tenant, &p.name, reason.as_str()]);
        }
    }
}
