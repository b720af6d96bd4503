//! The runtime plan: the config resolved once into the checked, typed form
//! Weir runs from. `weir run`, `weir check` and a config reload all build it
//! the same way ([`Plan::load`]), so what one accepts the others accept.
//!
//! The config (crate::config) holds the YAML as written and checks what needs
//! nothing else; the plan adds what needs the rest of Weir (exclusion-rule
//! queries compiled, plugin files validated) and gathers each tenant's
//! settings into one [`TenantPlan`], its route resolved from regions and
//! backends by name. Two plans compare by value (`Secret`s in constant time,
//! never printed); [`changes`] names, for a reload, each field that differs.
mod diff;
mod tenant;

pub use diff::{changes, Changes};
pub use tenant::{compile_rules, TenantPlan, Tier};

use crate::config::{Config, ConfigError, EMBEDDED_DEFAULT, EMBEDDED_NAME};
use crate::rules::exclusion::Rule;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
pub struct Plan {
    /// The sections Weir uses as written: listeners, limits, admin, log,
    /// backends, regions, data directory, shutdown timeout.
    pub config: Config,
    /// Exclusion rules every tenant's events are checked against first, compiled.
    pub global_rules: Vec<Arc<Rule>>,
    /// One per configured tenant, in the YAML's order.
    pub tenants: Vec<TenantPlan>,
}

impl PartialEq for Plan {
    /// Same plan: same tenants and rules, and the rest of the YAML the same value by value.
    fn eq(&self, other: &Plan) -> bool {
        self.tenants == other.tenants
            && self.global_rules == other.global_rules
            && self.config.raw == other.config.raw
    }
}

impl Plan {
    /// The plan of the config at `path`, or of the embedded local default.
    pub fn load(path: Option<&Path>) -> Result<Plan, ConfigError> {
        let config = match path {
            Some(p) => Config::load(p)?,
            None => Config::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME)?,
        };
        Plan::resolve(config)
    }

    /// The plan of YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Plan, ConfigError> {
        Plan::resolve(Config::parse(text, file)?)
    }

    /// Resolves a validated config. Errors are located in the config's file.
    pub fn resolve(config: Config) -> Result<Plan, ConfigError> {
        let global_rules = compile_rules(&config.exclusion_rules, "exclusion_rules")
            .map_err(|e| config.origin.locate(e))?;
        let tenants = config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| TenantPlan::resolve(&config, i, t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config.origin.locate(e))?;
        same_failover_per_store(&config, &tenants).map_err(|e| config.origin.locate(e))?;
        Ok(Plan {
            config,
            global_rules,
            tenants,
        })
    }

    /// The tenant named `name`.
    pub fn tenant(&self, name: &str) -> Option<&TenantPlan> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

/// A store's health is one, whichever archive writes to it: archives that
/// share a store must agree on when it is down and when it is tried again.
fn same_failover_per_store(
    config: &Config,
    tenants: &[TenantPlan],
) -> Result<(), crate::config::Invalid> {
    let mut seen: Vec<(String, crate::config::StoreFailover, &str)> = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        if !t.archive.enabled {
            continue;
        }
        for s in &t.archive_stores {
            match seen.iter().find(|(name, ..)| name == &s.name) {
                Some((_, f, other)) if *f != t.archive.failover => {
                    let field = match config.tenants[i].archive {
                        Some(_) => format!("tenants[{i}].archive.failover"),
                        None => "archive.failover".to_string(),
                    };
                    return Err(crate::config::invalid(
                        field,
                        format!(
                            "tenant {:?} writes to archive store {:?} with other failover settings than tenant {other:?}: a store's health is shared, so archives sharing a store need the same failover",
                            t.name, s.name
                        ),
                    ));
                }
                Some(_) => {}
                None => seen.push((s.name.clone(), t.archive.failover, t.name.as_str())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
