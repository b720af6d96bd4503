//! Run-time changes (rules, quotas) shared by the fleet: one versioned
//! document in Redis, replaced only by a compare-and-set that also announces
//! the new version on a channel. Every instance applies a newer version when
//! the announcement arrives (milliseconds), and reads the version every
//! `config_poll` anyway, since pub/sub delivers at most once.
use super::store::{Conn, StoreError};
use super::Fleet;
use crate::telemetry::fleet::FLEET;
use redis::PushKind;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// What holds the changes here (the admin control); the fleet does not know
/// their shape, only their version and JSON.
pub trait SharedChanges: Send + Sync {
    /// The version applied here (0: none).
    fn applied_version(&self) -> u64;
    /// The document applied here, as JSON.
    fn applied_doc(&self) -> String;
    /// Applies version `version` of the document; false if this instance
    /// already had it (its own change, announced back to it).
    fn apply_shared(&self, version: u64, doc: &str) -> Result<bool, String>;
}

/// The outcome of a compare-and-set.
pub enum Cas {
    /// Written as this version.
    Written(u64),
    /// Someone wrote first: the version now there.
    Conflict(u64),
}

// KEYS[1] the document; ARGV: expected version, document, channel, new version.
const CAS: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return {0, v} end
local n = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'version', n, 'doc', ARGV[2])
redis.call('PUBLISH', ARGV[3], n)
return {1, n}
"#;

impl Fleet {
    /// The version and document in Redis (version 0: none).
    pub async fn read_changes(&self) -> Result<(u64, Option<String>), StoreError> {
        let key = self.keys.runtime();
        self.store
            .call("config_get", |mut c: Conn| async move {
                let (v, doc): (Option<u64>, Option<String>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("version")
                    .arg("doc")
                    .query_async(&mut c)
                    .await?;
                Ok((v.unwrap_or(0), doc))
            })
            .await
    }

    /// Replaces the document if its version is still `expected`, as version
    /// `new` (normally `expected + 1`), and announces it.
    pub async fn write_changes(
        &self,
        expected: u64,
        new: u64,
        doc: &str,
    ) -> Result<Cas, StoreError> {
        let key = self.keys.runtime();
        let channel = self.keys.runtime_channel();
        let doc = doc.to_string();
        self.store
            .call("config_cas", |mut c: Conn| async move {
                let (written, v): (u8, u64) = redis::Script::new(CAS)
                    .key(&key)
                    .arg(expected)
                    .arg(&doc)
                    .arg(&channel)
                    .arg(new)
                    .invoke_async(&mut c)
                    .await?;
                Ok(if written == 1 {
                    Cas::Written(v)
                } else {
                    Cas::Conflict(v)
                })
            })
            .await
    }

    /// Brings this instance and Redis to the newest version: applies a newer
    /// one from Redis; writes this one back if Redis has an older one (it
    /// lost its data, or this instance changed while it was away).
    pub async fn reconcile(&self, target: &dyn SharedChanges) -> Result<(), StoreError> {
        let (remote, doc) = self.read_changes().await?;
        let local = target.applied_version();
        if remote > local {
            match doc {
                Some(doc) => match target.apply_shared(remote, &doc) {
                    Ok(false) => {}
                    Ok(true) => tracing::info!(
                        target: "weir::audit",
                        change = "fleet",
                        version = remote,
                        "rules and quotas changed through another instance, applied here"
                    ),
                    Err(e) => tracing::error!(
                        version = remote,
                        error = %e,
                        "the fleet's rules and quotas could not be applied here; keeping version {local}"
                    ),
                },
                None => tracing::warn!(
                    version = remote,
                    "the fleet's document has a version but no body"
                ),
            }
        } else if remote < local {
            let doc = target.applied_doc();
            if let Cas::Written(_) = self.write_changes(remote, local, &doc).await? {
                tracing::info!(
                    version = local,
                    "the fleet's Redis had an older version of the rules and quotas: this instance's written back"
                );
            }
        }
        FLEET.config_version.set(target.applied_version() as i64);
        Ok(())
    }
}

/// Applies the fleet's changes here as they come, until `stop`.
pub async fn watch(
    fleet: Arc<Fleet>,
    target: Arc<dyn SharedChanges>,
    mut pushes: UnboundedReceiver<redis::PushInfo>,
    stop: CancellationToken,
) {
    let channel = fleet.keys.runtime_channel();
    let poll = fleet.config().config_poll.0;
    // The connection subscribed on (a new one must subscribe again).
    let mut subscribed: Option<u64> = None;
    loop {
        if subscribed != Some(fleet.store.generation()) {
            subscribed = match fleet.store.subscribe(&channel).await {
                Ok(()) => Some(fleet.store.generation()),
                Err(_) => None,
            };
        }
        let _ = fleet.reconcile(target.as_ref()).await;
        let wait = if subscribed.is_some() {
            poll
        } else {
            poll.min(std::time::Duration::from_secs(1))
        };
        tokio::select! {
            push = pushes.recv() => match push {
                Some(p) if p.kind == PushKind::Message => {}
                // A dropped connection may have lost announcements: read now.
                Some(p) if p.kind == PushKind::Disconnection => {}
                Some(_) => continue,
                None => return,
            },
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
