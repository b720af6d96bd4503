//! What differs between two plans, field by field: what a config reload
//! applies (routing: backends, regions, each tenant's backend, region,
//! failover regions and upstream key) and what takes a restart.
//!
//! Fields are named by their path in the YAML (`limits.max_body_bytes`,
//! `tenants[0].archive.store.secret_access_key`) and compared by value as
//! written, `${ENV}` expanded, secrets included: a changed credential is seen.
//! Values are never printed, only paths.
use super::Plan;

/// The changed fields of a reload, by path.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routing fields a reload applies (a new upstream key or backend token among them).
    pub applied: Vec<String>,
    /// Everything else: the running proxy keeps the old value until restarted.
    pub needs_restart: Vec<String>,
}

/// What differs from `old` (running) to `new` (reloaded).
pub fn changes(old: &Plan, new: &Plan) -> Changes {
    if old == new {
        return Changes::default();
    }
    let mut all = Vec::new();
    diff(&old.config.raw, &new.config.raw, String::new(), &mut all);
    let (applied, needs_restart) = all.into_iter().partition(|path| applied_by_reload(path));
    Changes {
        applied,
        needs_restart,
    }
}

/// Top-level sections a reload applies (routing); everything else needs a restart.
const APPLIED_SECTIONS: [&str; 2] = ["backends", "regions"];
/// Tenant fields a reload applies (its routing).
const APPLIED_TENANT_FIELDS: [&str; 4] =
    ["backend", "region", "failover_regions", "upstream_api_key"];

/// Whether a reload applies the field at `path`.
fn applied_by_reload(path: &str) -> bool {
    let top = path.split(['.', '[']).next().unwrap_or("");
    // A region's archive stores are archive settings: at start only.
    if top == "regions" && path.contains(".archive_stores") {
        return false;
    }
    if APPLIED_SECTIONS.contains(&top) {
        return true;
    }
    // tenants[i].field...
    if let Some(rest) = path.strip_prefix("tenants[") {
        if let Some((_, field)) = rest.split_once("].") {
            let field = field.split(['.', '[']).next().unwrap_or("");
            return APPLIED_TENANT_FIELDS.contains(&field);
        }
    }
    false
}

/// The field paths whose values differ between two configs as written,
/// outside what a reload applies.
#[cfg(test)]
fn changed_fields(old: &serde_yaml::Value, new: &serde_yaml::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(old, new, String::new(), &mut out);
    out.retain(|path| !applied_by_reload(path));
    out
}

fn diff(old: &serde_yaml::Value, new: &serde_yaml::Value, path: String, out: &mut Vec<String>) {
    use serde_yaml::Value as Y;
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let empty = Y::Mapping(Default::default());
    // A section added or removed whole: name its fields, not just the section.
    let (old, new) = match (old, new) {
        (Y::Null, b @ Y::Mapping(_)) => (&empty, b),
        (a @ Y::Mapping(_), Y::Null) => (a, &empty),
        other => other,
    };
    match (old, new) {
        (Y::Mapping(a), Y::Mapping(b)) => {
            let mut keys: Vec<String> = a
                .keys()
                .chain(b.keys())
                .map(|k| match k {
                    Y::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                })
                .collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let key = Y::String(k.clone());
                let null = Y::Null;
                diff(
                    a.get(&key).unwrap_or(&null),
                    b.get(&key).unwrap_or(&null),
                    join(&k),
                    out,
                );
            }
        }
        (Y::Sequence(a), Y::Sequence(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, format!("{path}[{i}]"), out);
            }
        }
        (Y::Tagged(a), Y::Tagged(b)) if a.tag == b.tag => diff(&a.value, &b.value, path, out),
        (a, b) if a == b => {}
        _ => out.push(if path.is_empty() {
            "(whole file)".into()
        } else {
            path
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::changed_fields;

    fn y(s: &str) -> serde_yaml::Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn needs_restart_names_each_changed_field_and_skips_routing() {
        let old = y("archive: {store: {type: s3, bucket: b, secret_access_key: one}}\nbackends: [{name: a, url: x}]\nlimits: {max_body_bytes: 5MiB}\ntenants:\n  - {name: t, backend: a, exclusion_rules: [{name: r, query: q, sample_rate: 0.5}]}\n");
        let new = y("archive: {store: {type: s3, bucket: b, secret_access_key: two}}\nbackends: [{name: a, url: y}]\nlimits: {max_body_bytes: 5MiB, idle_timeout: 5s}\ntenants:\n  - {name: t, backend: b, exclusion_rules: [{name: r, query: q, sample_rate: 0.9}]}\n");
        assert_eq!(
            changed_fields(&old, &new),
            vec![
                "archive.store.secret_access_key",
                "limits.idle_timeout",
                "tenants[0].exclusion_rules[0].sample_rate",
            ]
        );
        assert!(changed_fields(&old, &old).is_empty());
    }

    #[test]
    fn a_regions_archive_stores_need_a_restart_its_tiers_do_not() {
        let old = y("regions: [{name: eu, tiers: [[a]], archive_stores: [s1]}]
");
        let new = y("regions: [{name: eu, tiers: [[b]], archive_stores: [s2]}]
");
        assert_eq!(
            changed_fields(&old, &new),
            vec!["regions[0].archive_stores[0]"]
        );
    }
}
