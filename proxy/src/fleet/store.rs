//! The connection to the fleet's Redis (one node or a cluster): every call
//! bounded by `op_timeout`, timed and counted, and whether Redis answers now.
//! The `redis` crate reconnects in the background with back-off; a call made
//! while it does fails at its timeout rather than waiting.
use crate::config::FleetConfig;
use crate::telemetry::fleet::FLEET;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Mutex};

/// Failed calls in a row after which the connection is dropped and made anew.
const RECONNECT_AFTER: u32 = 3;

/// One node or a cluster, as one connection type.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a call failed; never holds the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the fleet's Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the fleet's Redis: {0}")]
    Redis(String),
}

pub struct Store {
    cfg: FleetConfig,
    /// Made on first use, and made anew after `RECONNECT_AFTER` failed calls
    /// in a row: a connection to a host that vanished without closing it, or
    /// one whose setup was refused, would otherwise fail every call for good.
    conn: Mutex<Option<Conn>>,
    failures: AtomicU32,
    /// Counts new connections, so that subscriptions are made again on each.
    generation: AtomicU64,
    /// Pub/sub messages (RESP3 pushes) for the run-time change watcher.
    pushes: mpsc::UnboundedSender<PushInfo>,
    up: AtomicBool,
}

/// Scrubs credentials from a Redis error's text, which may quote the URL.
fn describe(e: &redis::RedisError) -> String {
    let s = e.to_string();
    match s.find("redis://").or_else(|| s.find("rediss://")) {
        Some(i) => format!("{} <url>", &s[..i]),
        None => s,
    }
}

impl Store {
    /// Connects lazily: a fleet whose Redis is down at start runs degraded
    /// until it answers.
    pub fn new(cfg: &FleetConfig) -> (Store, mpsc::UnboundedReceiver<PushInfo>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = Store {
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            failures: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            pushes: tx,
            up: AtomicBool::new(false),
        };
        FLEET.store_up.set(0);
        (store, rx)
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Which connection calls go over now (it changes when one is made anew).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let t = self.cfg.op_timeout.0;
        if let Some(url) = &self.cfg.redis.url {
            let info = url.expose().into_connection_info()?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t))
                .set_min_delay(Duration::from_millis(100))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(3)
                .set_push_sender(self.pushes.clone())
                .set_automatic_resubscription();
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                client, cfg,
            )?))
        } else {
            let nodes: Vec<String> = self
                .cfg
                .redis
                .cluster_nodes
                .iter()
                .map(|s| s.expose().to_string())
                .collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(self.pushes.clone())
                .connection_timeout(t)
                .response_timeout(t)
                .retries(2)
                .min_retry_wait(100)
                .max_retry_wait(2000)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }

    /// Runs `f` on the connection within `op_timeout`, timed as `op`.
    pub async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let t = self.cfg.op_timeout.0;
        let started = Instant::now();
        let result = tokio::time::timeout(t, async {
            let conn = {
                let mut slot = self.conn.lock().await;
                match &*slot {
                    Some(c) => c.clone(),
                    None => {
                        let c = self.connect().await?;
                        self.generation.fetch_add(1, Ordering::Relaxed);
                        slot.insert(c).clone()
                    }
                }
            };
            f(conn).await
        })
        .await;
        FLEET
            .store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let (out, kind) = match result {
            Ok(Ok(v)) => (Ok(v), None),
            Ok(Err(e)) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_io_error() || e.is_connection_dropped() {
                    "io"
                } else {
                    "response"
                };
                (Err(StoreError::Redis(describe(&e))), Some(kind))
            }
            Err(_) => (Err(StoreError::Timeout(t)), Some("timeout")),
        };
        match kind {
            None => {
                self.failures.store(0, Ordering::Relaxed);
                self.set_up(true)
            }
            Some(kind) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= RECONNECT_AFTER {
                    self.failures.store(0, Ordering::Relaxed);
                    *self.conn.lock().await = None;
                }
                FLEET.store_errors.with_label_values(&[op, kind]).inc();
                // A server's refusal of one command says nothing about reachability.
                if kind != "response" {
                    self.set_up(false);
                }
            }
        }
        out
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            FLEET.store_up.set(up as i64);
            if up {
                tracing::info!("fleet store (Redis) answers: sharing quotas and changes again");
            } else {
                tracing::warn!(
                    policy = self.cfg.on_unavailable.as_str(),
                    "fleet store (Redis) does not answer: quotas and rate limits follow fleet.on_unavailable until it does"
                );
            }
        }
    }
}

/// The keys of one fleet: `<prefix>:{<tenant>}:...` keeps a tenant's keys in
/// one cluster slot, so each tenant's sync is one pipeline on one node.
#[derive(Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    /// A tenant's daily usage, by partition and instance, for one quota day.
    pub fn quota(&self, tenant: &str, window_start_ms: i64) -> String {
        format!("{}:{{{tenant}}}:q:{window_start_ms}", self.prefix)
    }
    /// The instances seen lately: instance → last seen (ms).
    pub fn members(&self) -> String {
        format!("{}:{{fleet}}:members", self.prefix)
    }
    /// The shared rules and quotas: `version` and `doc`.
    pub fn runtime(&self) -> String {
        format!("{}:{{fleet}}:runtime", self.prefix)
    }
    /// Where a new runtime version is announced.
    pub fn runtime_channel(&self) -> String {
        format!("{}:{{fleet}}:runtime", self.prefix)
    }
}

impl Store {
    /// Subscribes to `channel`; the connection subscribes again by itself
    /// after a reconnect.
    pub async fn subscribe(&self, channel: &str) -> Result<(), StoreError> {
        let channel = channel.to_string();
        self.call("subscribe", |c| async move {
            match c {
                Conn::Single(mut c) => c.subscribe(channel).await,
                Conn::Cluster(mut c) => c.subscribe(channel).await,
            }
        })
        .await
    }
}
