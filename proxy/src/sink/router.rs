//! The routing of every tenant: backends (clients, health, active checks)
//! and one route per tenant, as one generation that a config reload replaces.
//!
//! A reload builds the whole new generation first (any error: nothing
//! changes), then swaps each tenant's route handle. The old routes then get
//! no new batches; they send what they hold and end on their own, so no
//! batch in flight is dropped. The old generation's health checks stop; a
//! backend the reload left as it was (same type, address and passive
//! settings) keeps its health, so a reload sends no traffic to a backend
//! known to be down.
use super::health::{spawn_check, BackendHealth};
use super::{spawn_route, Member, RouteHandle, RouteSlot};
use crate::archive::DeadLetters;
use crate::config::{BackendConfig, BackendType, PassiveHealthConfig};
use crate::plan::Plan;
use crate::telemetry::faults::Task;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a reload's routing could not be swapped in (the running one stays).
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error("the tenants changed (running {running}, new file {new}); a reload changes routing only: restart weir to add, remove or rename tenants")]
    TenantsChanged { running: String, new: String },
    /// A backend of the new config cannot be built (e.g. an unreadable CA file).
    #[error("{0}")]
    Build(String),
}

pub struct Router {
    /// Each tenant's name and current route, in the plan's order.
    routes: Vec<(String, RouteSlot)>,
    /// Where each tenant's undeliverable events go, by tenant name (none: no archive).
    dead_letters: HashMap<String, DeadLetters>,
    drain: CancellationToken,
    state: Mutex<State>,
}

struct State {
    healths: Vec<(Target, Arc<BackendHealth>)>,
    /// The current generation's backends and tenants, for a route to one
    /// backend (rehydration's `to_backend`).
    lone: LoneRoutes,
    /// Stops the current generation's health checks.
    checks: CancellationToken,
    /// Every route task ever started (old ones end once their batches are sent).
    tasks: Vec<JoinHandle<()>>,
}

struct Generation {
    /// Each tenant's name and new route, in the plan's order.
    routes: Vec<(String, RouteHandle)>,
    lone: LoneRoutes,
    tasks: Vec<JoinHandle<()>>,
    healths: Vec<(Target, Arc<BackendHealth>)>,
    checks: CancellationToken,
}

/// What a backend's health is the health of: a reload that leaves it alone keeps the health.
#[derive(PartialEq)]
struct Target {
    name: String,
    kind: BackendType,
    /// Its endpoint, URL or path.
    address: String,
    passive: PassiveHealthConfig,
}

impl Target {
    fn of(b: &BackendConfig) -> Target {
        Target {
            name: b.name.clone(),
            kind: b.backend_type(),
            address: b.kind.address(),
            passive: b.passive.clone(),
        }
    }
}

fn generation(
    plan: &Plan,
    previous: &[(Target, Arc<BackendHealth>)],
    dead_letters: &HashMap<String, DeadLetters>,
    drain: &CancellationToken,
) -> anyhow::Result<Generation> {
    // One client and one health state per backend, shared by every route using it.
    let config = &plan.config;
    let checks = drain.child_token();
    let mut backends = HashMap::new();
    let mut healths = Vec::new();
    for b in &config.backends {
        let backend = Arc::new(super::backend::Backend::from_config(b)?);
        let target = Target::of(b);
        let health = match previous.iter().find(|(t, _)| *t == target) {
            Some((_, h)) => h.clone(),
            None => BackendHealth::new(&b.name, b.passive.clone()),
        };
        healths.push((target, health.clone()));
        backends.insert(
            b.name.clone(),
            (backend, health, b.weight, b.health_check.clone()),
        );
    }
    let mut routes = Vec::new();
    let mut tasks = Vec::new();
    let mut lone = LoneRoutes {
        drain_rate: config.buffer.drain_rate,
        ..Default::default()
    };
    for (name, (backend, health, weight, _)) in &backends {
        let cfg = config.backend(name).expect("built from the config").clone();
        let member = Member {
            backend: backend.clone(),
            health: health.clone(),
            weight: *weight,
        };
        lone.backends.insert(name.clone(), (member, cfg));
    }
    for t in &plan.tenants {
        let tiers: Vec<Vec<Member>> = t
            .route
            .iter()
            .map(|tier| {
                tier.backends
                    .iter()
                    .map(|name| {
                        let (backend, health, weight, _) = &backends[name];
                        Member {
                            backend: backend.clone(),
                            health: health.clone(),
                            weight: *weight,
                        }
                    })
                    .collect()
            })
            .collect();
        let preferred = config
            .backend(t.preferred_backend())
            .expect("resolved: routes name defined backends");
        let limits = route_limits(plan, t);
        let upstream = t.upstream_api_key.as_ref().map(|k| k.expose().to_string());
        let allowed = t.route.iter().flat_map(|tier| tier.backends.clone());
        lone.tenants
            .insert(t.name.clone(), (allowed.collect(), upstream.clone()));
        let (route, task) = spawn_route(
            &t.name,
            upstream,
            tiers,
            preferred,
            limits,
            dead_letters.get(&t.name).cloned(),
            drain.clone(),
        );
        routes.push((t.name.clone(), route));
        tasks.push(task);
    }
    // Checks only once everything is built (an error above leaves none running).
    for (backend, health, _, check) in backends.into_values() {
        if let Some(check) = check {
            spawn_check(health, backend, check, checks.clone());
        }
    }
    Ok(Generation {
        routes,
        lone,
        tasks,
        healths,
        checks,
    })
}

/// The smallest batch limits of tenant `t`'s route: a batch must fit every
/// backend it may fail over to.
fn route_limits(plan: &Plan, t: &crate::plan::TenantPlan) -> super::RouteLimits {
    let config = &plan.config;
    let configs: Vec<&BackendConfig> = t
        .route
        .iter()
        .flat_map(|tier| tier.backends.iter())
        .map(|name| config.backend(name).expect("validated"))
        .collect();
    super::RouteLimits {
        max_events: configs.iter().map(|b| b.batch.max_events).min().unwrap(),
        max_bytes: configs
            .iter()
            .map(|b| b.batch.max_bytes.as_usize())
            .min()
            .unwrap(),
        events_per_second: config.buffer.drain_rate,
    }
}

/// What a route to one backend needs: every backend of the current
/// generation (with its config) and, by tenant, the backends its events may
/// go to and its upstream key.
#[derive(Default)]
struct LoneRoutes {
    backends: HashMap<String, (Member, BackendConfig)>,
    tenants: HashMap<String, (Vec<String>, Option<String>)>,
    drain_rate: Option<u64>,
}

/// Why a route to one backend was not built.
#[derive(Debug, thiserror::Error)]
pub enum LoneRouteError {
    #[error("no tenant {0:?}")]
    NoTenant(String),
    #[error("no backend named {0:?}")]
    NoBackend(String),
    /// Data residency: the backend is outside the tenant's region pinning.
    #[error("residency: tenant {tenant:?}'s events may go only to {allowed:?} (its backend, or its region and failover regions), not to {backend:?}")]
    NotAllowed {
        tenant: String,
        backend: String,
        allowed: Vec<String>,
    },
}

/// What a reload changed.
#[derive(Debug)]
pub struct Reloaded {
    pub backends: usize,
    pub regions: usize,
}

impl Router {
    /// The first generation; `dead_letters` by tenant name.
    pub fn start(
        plan: &Plan,
        dead_letters: HashMap<String, DeadLetters>,
        drain: CancellationToken,
    ) -> anyhow::Result<Arc<Router>> {
        let g = generation(plan, &[], &dead_letters, &drain)?;
        crate::telemetry::seed(&plan.config);
        let router = Arc::new(Router {
            routes: g
                .routes
                .into_iter()
                .map(|(name, r)| (name, Arc::new(RwLock::new(r))))
                .collect(),
            dead_letters,
            drain,
            state: Mutex::new(State {
                healths: g.healths,
                lone: g.lone,
                checks: g.checks,
                tasks: g.tasks,
            }),
        });
        // weir_backend_up reads the current generation's health at each scrape.
        let weak = Arc::downgrade(&router);
        crate::telemetry::METRICS
            .backend_up
            .set_source(Box::new(move || {
                weak.upgrade().map_or_else(Vec::new, |r| {
                    r.healths()
                        .iter()
                        .map(|h| (vec![h.name.clone()], h.is_up() as i64))
                        .collect()
                })
            }));
        Ok(router)
    }

    /// Where tenant `name`'s current route is found (the archive tee reads it per batch).
    pub fn slot(&self, name: &str) -> Option<RouteSlot> {
        let (_, slot) = self.routes.iter().find(|(t, _)| t == name)?;
        Some(slot.clone())
    }

    pub fn healths(&self) -> Vec<Arc<BackendHealth>> {
        let state = self.state.lock().unwrap();
        state.healths.iter().map(|(_, h)| h.clone()).collect()
    }

    /// Swaps in the routing of `plan`. Its tenants must be the running ones,
    /// in the same order: adding or removing tenants takes a restart.
    pub fn reload(&self, plan: &Plan) -> Result<Reloaded, RoutingError> {
        let config = &plan.config;
        let names: Vec<&str> = plan.tenants.iter().map(|t| t.name.as_str()).collect();
        let running: Vec<&str> = self.routes.iter().map(|(n, _)| n.as_str()).collect();
        if names != running {
            return Err(RoutingError::TenantsChanged {
                running: format!("{running:?}"),
                new: format!("{names:?}"),
            });
        }
        let mut state = self.state.lock().unwrap();
        let g = generation(plan, &state.healths, &self.dead_letters, &self.drain)
            .map_err(|e| RoutingError::Build(format!("{e:#}")))?;
        for (name, route) in g.routes {
            let slot = self.slot(&name).expect("the same tenants, checked above");
            // The old handle drops here: its route sends what it holds, then ends.
            *slot.write().unwrap() = route;
        }
        state.checks.cancel();
        state.checks = g.checks;
        state.lone = g.lone;
        // Backends the new config dropped stop being reported (weir_backend_up reads these).
        state.healths = g.healths;
        crate::telemetry::seed(config);
        // Old generations' routes that have ended are let go; one that ended by a panic is reported, not dropped unseen.
        super::reap(
            Task::Route,
            "a route of an earlier generation",
            &mut state.tasks,
        );
        state.tasks.extend(g.tasks);
        Ok(Reloaded {
            backends: config.backends.len(),
            regions: config.regions.len(),
        })
    }

    /// The backends tenant `name`'s events may go to under the current routing
    /// (its backend, or every backend of its region and failover regions), in
    /// order of preference; none for an unknown tenant.
    pub fn allowed_backends(&self, name: &str) -> Option<Vec<String>> {
        let state = self.state.lock().unwrap();
        state.lone.tenants.get(name).map(|(b, _)| b.clone())
    }

    /// A new route carrying `tenant`'s events to `backend` alone (no
    /// failover), with the backend's own batching, retries and health, and
    /// the tenant's upstream key and dead letters. Refused unless the backend
    /// is one the tenant's events may go to (data residency). The route ends
    /// once its handle is dropped and what it holds is sent; shutdown waits
    /// for it like any other route.
    pub fn backend_route(
        &self,
        tenant: &str,
        backend: &str,
    ) -> Result<RouteHandle, LoneRouteError> {
        let mut state = self.state.lock().unwrap();
        let (allowed, upstream) = state
            .lone
            .tenants
            .get(tenant)
            .ok_or_else(|| LoneRouteError::NoTenant(tenant.to_string()))?;
        if !allowed.iter().any(|b| b == backend) {
            return Err(match state.lone.backends.contains_key(backend) {
                true => LoneRouteError::NotAllowed {
                    tenant: tenant.to_string(),
                    backend: backend.to_string(),
                    allowed: allowed.clone(),
                },
                false => LoneRouteError::NoBackend(backend.to_string()),
            });
        }
        let (member, cfg) = &state.lone.backends[backend];
        let limits = super::RouteLimits {
            max_events: cfg.batch.max_events,
            max_bytes: cfg.batch.max_bytes.as_usize(),
            events_per_second: state.lone.drain_rate,
        };
        let (route, task) = spawn_route(
            tenant,
            upstream.clone(),
            vec![vec![member.clone()]],
            cfg,
            limits,
            self.dead_letters.get(tenant).cloned(),
            self.drain.clone(),
        );
        state.tasks.push(task);
        Ok(route)
    }

    /// The route tasks to wait for at shutdown (after the drain is cancelled).
    pub fn tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.state.lock().unwrap().tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(a_port: u16) -> Plan {
        let text = format!(
            "listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]
archive: {{store: {{type: local, root: /nonexistent}}}}
backends:
  - {{name: a, type: http, url: \"http://127.0.0.1:{a_port}/in\", passive: {{max_failures: 1, ejection: 1h}}}}
  - {{name: b, type: http, url: \"http://127.0.0.1:9/in\"}}
regions: [{{name: eu, tiers: [[a], [b]]}}]
tenants: [{{name: t, api_keys: [k], region: eu}}]
"
        );
        Plan::parse(&text, "weir.yaml").unwrap()
    }

    fn health(router: &Router, name: &str) -> Arc<BackendHealth> {
        router
            .healths()
            .into_iter()
            .find(|h| h.name == name)
            .unwrap()
    }

    #[tokio::test]
    async fn a_route_to_one_backend_only_where_the_tenant_may_go() {
        let plan = Plan::parse(
            "listeners: [{name: i, address: \"127.0.0.1:0\", protocol: http}]
archive: {store: {type: local, root: /nonexistent}}
backends:
  - {name: a, type: http, url: \"http://127.0.0.1:9/in\"}
  - {name: b, type: http, url: \"http://127.0.0.1:9/in\"}
  - {name: us, type: http, url: \"http://127.0.0.1:9/in\"}
regions: [{name: eu, tiers: [[a], [b]]}, {name: us, tiers: [[us]]}]
tenants: [{name: t, api_keys: [k], region: eu}]
",
            "weir.yaml",
        )
        .unwrap();
        let router = Router::start(&plan, HashMap::new(), CancellationToken::new()).unwrap();
        assert_eq!(router.allowed_backends("t").unwrap(), ["a", "b"]);
        assert!(
            router.backend_route("t", "b").is_ok(),
            "its region's second tier"
        );
        let e = router.backend_route("t", "us").err().unwrap();
        assert!(matches!(e, LoneRouteError::NotAllowed { .. }), "{e}");
        assert!(e.to_string().starts_with("residency: "), "{e}");
        assert!(matches!(
            router.backend_route("t", "nope"),
            Err(LoneRouteError::NoBackend(_))
        ));
        assert!(matches!(
            router.backend_route("x", "a"),
            Err(LoneRouteError::NoTenant(_))
        ));
    }

    #[tokio::test]
    async fn a_reload_keeps_the_health_of_backends_it_leaves_alone() {
        let router = Router::start(&config(1), HashMap::new(), CancellationToken::new()).unwrap();
        let a = health(&router, "a");
        a.record_failure("connection refused");
        assert_eq!(a.report().state, "ejected");

        // Same file again: `a` stays ejected, its traffic stays away from it.
        router.reload(&config(1)).unwrap();
        assert!(Arc::ptr_eq(&a, &health(&router, "a")));
        assert_eq!(health(&router, "a").report().state, "ejected");

        // `a` now points elsewhere: a new backend, with a clean slate.
        router.reload(&config(2)).unwrap();
        let moved = health(&router, "a");
        assert!(!Arc::ptr_eq(&a, &moved));
        assert_eq!(moved.report().state, "up");
        assert_eq!(moved.report().ejections, 0);
    }

    #[tokio::test]
    async fn a_reload_reports_a_route_task_that_ended_by_a_panic() {
        let count = || {
            crate::telemetry::METRICS
                .task_failures
                .with_label_values(&["route"])
                .get()
        };
        let router = Router::start(&config(1), HashMap::new(), CancellationToken::new()).unwrap();
        // A route task of an older generation that died unseen.
        let dead = tokio::spawn(async { panic!("boom in an old route") });
        while !dead.is_finished() {
            tokio::task::yield_now().await;
        }
        router.state.lock().unwrap().tasks.push(dead);
        let before = count();
        router.reload(&config(1)).unwrap();
        assert_eq!(count(), before + 1, "taken out of the list, and reported");
        // Still running ones are kept for the shutdown to wait for.
        assert_eq!(
            router.tasks().len(),
            2,
            "this generation's and the last one's"
        );
    }
}
