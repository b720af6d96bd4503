//! The run-time changes to rules and quotas as saved (`data_dir/runtime.json`)
//! and, in a fleet, shared: what they replace in the YAML and how to tell.
use crate::config::ExclusionRuleConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub(super) const OVERRIDES_FILE: &str = "runtime.json";

/// What run-time changes replace in the YAML config; saved as runtime.json.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Overrides {
    /// Rule lists by scope: "global" or a tenant name.
    #[serde(default)]
    pub rules: BTreeMap<String, Vec<ExclusionRuleConfig>>,
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaChange>,
    /// In a fleet: the version of the fleet's shared changes this is (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaChange {
    #[serde(default)]
    pub max_events: Option<u64>,
    /// Bytes, or a size with a unit as in the YAML (`10MiB`).
    #[serde(default, deserialize_with = "byte_size")]
    pub max_bytes: Option<u64>,
}

fn byte_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<crate::config::ByteSize>::deserialize(d)?.map(|b| b.0))
}

impl Overrides {
    /// What the YAML itself says, in the same shape, to compare saved changes with
    /// and to go back to.
    pub fn from_config(c: &crate::config::Config) -> Overrides {
        let mut rules = BTreeMap::new();
        rules.insert("global".to_string(), c.exclusion_rules.clone());
        let mut quotas = BTreeMap::new();
        for t in &c.tenants {
            rules.insert(t.name.clone(), t.exclusion_rules.clone());
            if let Some(q) = &t.daily_quota {
                quotas.insert(
                    t.name.clone(),
                    QuotaChange {
                        max_events: q.max_events,
                        max_bytes: q.max_bytes.map(|b| b.0),
                    },
                );
            }
        }
        Overrides {
            rules,
            quotas,
            version: 0,
        }
    }

    /// The saved state in `data_dir`, if any.
    pub fn load(data_dir: &std::path::Path) -> anyhow::Result<Option<Overrides>> {
        let path = data_dir.join(OVERRIDES_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// One line per scope or tenant where `self` (saved at run time) differs from
    /// `yaml`: what a start with this saved state will use instead of the YAML.
    pub fn differences(&self, yaml: &Overrides) -> Vec<String> {
        let mut out = Vec::new();
        let none = Vec::new();
        for (scope, saved) in &self.rules {
            let from_yaml = yaml.rules.get(scope).unwrap_or(&none);
            let names =
                |rs: &[ExclusionRuleConfig]| rs.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
            if saved != from_yaml {
                out.push(format!(
                    "exclusion rules of {scope}: {:?} from the YAML are replaced by {:?} saved at run time",
                    names(from_yaml),
                    names(saved)
                ));
            }
        }
        for (tenant, saved) in &self.quotas {
            let from_yaml = yaml.quotas.get(tenant).cloned().unwrap_or_default();
            if *saved != from_yaml {
                out.push(format!(
                    "daily quota of {tenant}: max_events {} and max_bytes {} from the YAML are replaced by {} and {} saved at run time",
                    limit(from_yaml.max_events),
                    limit(from_yaml.max_bytes),
                    limit(saved.max_events),
                    limit(saved.max_bytes)
                ));
            }
        }
        out
    }
}

pub(super) fn limit(v: Option<u64>) -> String {
    v.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
}
