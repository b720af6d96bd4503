//! The transport-independent half of intake, shared by every protocol: a
//! credential to a tenant, the memory budget of payloads in flight (bodies,
//! their decompressed form, and the events decoded from them), decoding a
//! payload into a `Batch` with the protocol's [`Decode`], submitting it to the
//! stage chain, and counting and logging what was accepted or refused. It
//! knows no hyper types, so a protocol framed over a TCP stream calls it the
//! way the HTTP adapter does (see the module docs of `intake`).
//!
//! This is the one place intake uses `Tenants` and `Chain`.
use super::body::{decompress, Encoding};
use super::refusals::{Origin, RefusalLog, RefusedAt};
use super::Refusal;
use crate::budget::{Budget, Reservation};
use crate::config::Limits;
use crate::event::{Batch, BatchMeta, Event, Intake, PayloadLimits};
use crate::pipeline::{Room, Taken};
use crate::telemetry::{IntakeOutcome, METRICS};
use crate::tenant::{AuthError, Tenant, Tenants};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A protocol's decoder for one payload. Generic where it is used, so the
/// per-event path costs what the decoder itself costs.
pub trait Decode: Send + 'static {
    /// Decodes a whole (decompressed) payload. `admit(i)` must be asked before
    /// entry `i` is kept: false means no memory for it now, refused with
    /// [`Refusal::Busy`] (the core tells a request that could never fit apart).
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal>;
}

/// A payload as received, with the memory it holds reserved.
pub struct Payload {
    pub bytes: Bytes,
    pub encoding: Encoding,
    /// From [`Core::reserve_payload`], held until the batch is in the stages' queues.
    pub reservation: Reservation,
}

impl Payload {
    /// What its events may take in the tenant's queues, judged before it is
    /// decompressed: as NDJSON lines they take up to twice the JSON they came
    /// in (small events gain their timestamp and status), and logs compress 4
    /// to 10 times. Only what is taken before decoding: the excess is given
    /// back once the lines are written.
    fn queued_estimate(&self) -> usize {
        let plain = match self.encoding {
            Encoding::Identity => self.bytes.len(),
            _ => self.bytes.len().saturating_mul(4),
        };
        plain.saturating_mul(2)
    }
}

pub struct Core {
    /// Each carries its stage chain.
    tenants: Tenants,
    limits: Limits,
    /// Memory held by payloads being read and decoded, across all connections.
    budget: Budget,
    refusals: RefusalLog,
    auth_guard: super::auth_guard::AuthGuard,
}

impl Core {
    pub fn new(tenants: Tenants, limits: Limits) -> Arc<Core> {
        let budget = Budget::new(
            limits.max_inflight_request_bytes.as_usize(),
            crate::telemetry::queued_bytes(crate::telemetry::QueueKind::Intake),
        );
        Arc::new(Core {
            tenants,
            budget,
            refusals: RefusalLog::default(),
            auth_guard: super::auth_guard::AuthGuard::new(limits.auth_failures_per_ip_per_minute),
            limits,
        })
    }

    /// The tenant of a request from `origin`: the one its client certificate
    /// names (mutual TLS), else the one owning `key`; `hint` (where the
    /// protocol looks for a key) completes the refusal of a request without
    /// one. A key and a certificate naming different tenants are refused.
    /// An IP that spent its failed-authentication budget is answered 429,
    /// slowly, without its key being looked at (see `auth_guard`).
    pub async fn authenticate(
        &self,
        origin: &Origin,
        key: Option<&str>,
        hint: &'static str,
    ) -> Result<Arc<Tenant>, Refusal> {
        let ip = origin.peer.ip();
        if let Some(wait) = self.auth_guard.throttled(ip) {
            return Err(throttled(wait).await);
        }
        let by_cert = origin
            .client
            .as_ref()
            .and_then(|c| self.tenants.by_certificate(c));
        let by_key = match (by_cert.is_some(), key.map(str::trim)) {
            (true, None | Some("")) => None,
            _ => Some(self.tenants.authenticate(key)),
        };
        match (by_cert, by_key) {
            (Some(t), None) => Ok(t),
            (Some(t), Some(Ok(k))) if Arc::ptr_eq(&t, &k) => Ok(t),
            (Some(_), Some(Ok(_))) => Err(Refusal::KeyCertificateMismatch),
            (_, Some(Ok(k))) => Ok(k),
            (_, Some(Err(AuthError::Missing)) | None) => Err(Refusal::MissingKey { hint }),
            (_, Some(Err(AuthError::Unknown))) => {
                self.auth_guard.failed(ip);
                Err(Refusal::UnknownKey)
            }
        }
    }

    /// The tenant a listener names (senders without keys); the config checked it exists.
    pub fn tenant_named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants.named(name)
    }

    /// The largest payload taken, as sent (before decompression).
    pub fn max_payload(&self) -> usize {
        self.limits.max_body_bytes.as_usize()
    }

    /// Most events one payload may carry (`limits.max_events_per_request`).
    pub fn max_events(&self) -> usize {
        self.limits.max_events_per_request.unwrap_or(usize::MAX)
    }

    /// The largest payload taken once decompressed.
    pub fn max_decompressed(&self) -> usize {
        self.limits.max_decompressed_bytes.as_usize()
    }

    /// How long a sender may take to send one payload.
    pub fn read_timeout(&self) -> Duration {
        self.limits.body_read_timeout.0
    }

    /// How long a stream connection's next read may wait: `idle`, or, while a
    /// message is partly read (since `partial_since`), what is left of
    /// `limits.body_read_timeout` for it; true when the latter is the bound.
    pub fn stream_read_wait(
        &self,
        idle: Duration,
        partial_since: Option<Instant>,
    ) -> (Duration, bool) {
        match partial_since {
            Some(t) => {
                let left = self.read_timeout().saturating_sub(t.elapsed());
                if left < idle {
                    (left, true)
                } else {
                    (idle, false)
                }
            }
            None => (idle, false),
        }
    }

    /// When a request starting a wait now stops waiting and is refused
    /// (`limits.admission_wait`; a body's read time is not part of any wait).
    fn admission_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.limits.admission_wait.0
    }

    /// Reserves the memory of a payload before a byte of it is read:
    /// `declared` bytes, or the largest allowed when the sender did not say.
    /// Without room, it waits up to `limits.admission_wait` with the body
    /// unread (the sender is slowed down, nothing is spent on it), then
    /// refuses it whole.
    pub async fn reserve_payload(&self, declared: Option<usize>) -> Result<Reservation, Refusal> {
        let max = self.max_payload();
        if declared.is_some_and(|n| n > max) {
            return Err(Refusal::BodyTooLarge { max });
        }
        self.budget
            .reserve_until(declared.unwrap_or(max), self.admission_deadline())
            .await
            .ok_or(Refusal::Busy)
    }

    /// Decodes `payload` and runs its batch through the chain, on the tenant's
    /// intake threads (see `crate::workers`: at a lower priority than
    /// delivery, so an overloaded proxy slows its agents down rather than its
    /// backends). Before that, it waits (up to `limits.admission_wait`) for
    /// room in the tenant's queues or disk buffer, and then for a thread (as
    /// long, and at least [`THREAD_WAIT`]); a request refused for either is
    /// refused undecoded: a refusal costs next to nothing.
    pub async fn take<D: Decode>(
        self: &Arc<Self>,
        intake: Intake,
        tenant: Arc<Tenant>,
        payload: Payload,
        decoder: D,
    ) -> Result<(), Refusal> {
        let core = self.clone();
        let chain = tenant.chain.clone();
        let t = tenant.clone();
        let estimate = payload.queued_estimate();
        let room = chain.ready(estimate, self.admission_deadline()).await?;
        let deadline = Instant::now() + self.limits.admission_wait.0.max(THREAD_WAIT);
        let (taken, counts) = chain
            .place(move || {
                if Instant::now() >= deadline {
                    return Ok(Err(Refusal::NoThread));
                }
                Ok(core.decode_and_submit(intake, t, payload, decoder, room))
            })
            .await??;
        if !taken.waits() {
            chain.settle(taken).await?;
            counts.count(intake, &tenant);
            return Ok(());
        }
        // Answered per the tenant's ack mode (its log record synced, or delivered), in a
        // task of its own: a client that goes away meanwhile does not skip what the
        // stages charged (committed or given back) nor the request's counts.
        tokio::spawn(async move {
            chain.settle(taken).await?;
            counts.count(intake, &tenant);
            Ok::<(), Refusal>(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(Refusal::Stage(crate::pipeline::Rejection::new(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                crate::pipeline::RejectReason::InternalError,
                "answering the request failed unexpectedly; retry later",
            )))
        })
    }

    fn decode_and_submit<D: Decode>(
        &self,
        intake: Intake,
        tenant: Arc<Tenant>,
        payload: Payload,
        decoder: D,
        room: Room,
    ) -> Result<(Taken, Counts), Refusal> {
        let payload_res = payload.reservation;
        let received_at_ms = chrono::Utc::now().timestamp_millis();
        let max_plain = self.limits.max_decompressed_bytes.as_usize();
        let plain = decompress(payload.bytes, payload.encoding, max_plain)?;
        let plain_res = match payload.encoding {
            Encoding::Identity => None,
            _ => Some(self.budget.try_reserve(plain.len()).ok_or(Refusal::Busy)?),
        };
        let limits = PayloadLimits {
            max_events: self.max_events(),
            max_log_bytes: self.limits.max_log_bytes.as_usize(),
            received_at_ms,
        };
        // Held until the batch is in the stages' queues, which charge it again.
        let mut charge = EventCharge::new(&self.budget);
        let events = match decoder.decode(&plain, limits, &mut |i| charge.admit(i)) {
            Err(_) if charge.never_fits => {
                return Err(Refusal::EventsNeverFit {
                    covered: charge.covered,
                    capacity: self.budget.capacity(),
                })
            }
            other => other?,
        };
        let (taken, mut counts) =
            self.submit(intake, &tenant, events, plain.len(), received_at_ms, room)?;
        // Held until the request is answered: a record waiting for its sync is in memory too.
        counts.held = vec![payload_res];
        counts.held.extend(plain_res);
        Ok((taken, counts))
    }

    /// Runs a decoded batch through the chain.
    fn submit(
        &self,
        intake: Intake,
        tenant: &Arc<Tenant>,
        events: Vec<Event>,
        body_bytes: usize,
        received_at_ms: i64,
        room: Room,
    ) -> Result<(Taken, Counts), Refusal> {
        let counts = Counts {
            events: events.len(),
            truncated: events.iter().filter(|e| e.is_truncated()).count(),
            body_bytes,
            held: Vec::new(),
        };
        let batch = Batch::new(
            BatchMeta {
                tenant: tenant.name.clone(),
                intake,
                received_at_ms,
                body_bytes,
            },
            events,
        );
        Ok((tenant.chain.run(batch, room)?, counts))
    }

    /// Counts a submission's outcome (`weir_intake_request_duration_seconds`,
    /// from `started` to now) and records its refusal, if it was refused.
    pub fn finish(
        &self,
        origin: &Origin,
        intake: Intake,
        tenant: Option<&Tenant>,
        started: Instant,
        result: &Result<(), Refusal>,
    ) {
        let outcome = match result {
            Ok(()) => IntakeOutcome::Accepted,
            Err(_) => IntakeOutcome::Refused,
        };
        crate::telemetry::observe_intake(intake.as_str(), outcome, started);
        if let Err(r) = result {
            self.refused(origin, RefusedAt::Protocol(intake), tenant, r);
        }
    }

    /// Counts a refusal in `weir_rejected_requests_total` and logs it (rate-limited).
    pub fn refused(&self, origin: &Origin, at: RefusedAt, tenant: Option<&Tenant>, r: &Refusal) {
        METRICS
            .rejected_requests
            .with_label_values(&[at.as_str(), r.reason().as_str()])
            .inc();
        self.refusals
            .record(origin, at, tenant.map(|t| &*t.name), r);
    }
}

/// The least a request may wait for an intake thread (`admission_wait: 0`
/// means no wait for room, not no thread).
pub const THREAD_WAIT: Duration = Duration::from_secs(1);

/// What an accepted request is counted as, once it is answered.
struct Counts {
    events: usize,
    truncated: usize,
    body_bytes: usize,
    /// The request's memory in the intake budget, given back once it is answered.
    held: Vec<Reservation>,
}

impl Counts {
    fn count(&self, intake: Intake, tenant: &Tenant) {
        let labels = [&*tenant.name, intake.as_str()];
        METRICS.accepted_requests.with_label_values(&labels).inc();
        METRICS
            .received_events
            .with_label_values(&labels)
            .inc_by(self.events as u64);
        METRICS
            .received_bytes
            .with_label_values(&labels)
            .inc_by(self.body_bytes as u64);
        if self.truncated > 0 {
            METRICS
                .truncated_events
                .with_label_values(&[&tenant.name])
                .inc_by(self.truncated as u64);
        }
    }
}

/// Memory a decoded event holds besides its text (the struct, its tag vector and
/// attribute map). Requests are not limited by an entry count that agents do not
/// know about (Fluent Bit sends whole chunks of thousands), but a body of many tiny
/// entries must not multiply into gigabytes: each event is charged to the request
/// budget as it is decoded. A request that finds no room now is refused with 503;
/// one whose events could never fit, with 413.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Event>() + 64;
/// Events charged at a time, so the budget is not touched per event.
const CHARGE_EVERY: usize = 256;

/// The memory a request's decoded events hold: one reservation, grown a block at a time.
struct EventCharge<'a> {
    budget: &'a Budget,
    held: Option<Reservation>,
    /// Events the reservation covers.
    covered: usize,
    /// The request's events would not fit even in the whole budget: a retry cannot help.
    never_fits: bool,
}

impl<'a> EventCharge<'a> {
    fn new(budget: &'a Budget) -> Self {
        EventCharge {
            budget,
            held: None,
            covered: 0,
            never_fits: false,
        }
    }

    /// Admits entry `index`, growing the reservation by a block when it reaches its end.
    fn admit(&mut self, index: usize) -> bool {
        if index < self.covered {
            return true;
        }
        let covered = self.covered + CHARGE_EVERY;
        let bytes = covered * EVENT_OVERHEAD;
        // The body itself holds a reservation too, hence the half.
        if bytes > self.budget.capacity() / 2 {
            self.never_fits = true;
            return false;
        }
        let grown = match self.held.as_mut() {
            Some(r) => self.budget.resize(r, bytes),
            None => self
                .budget
                .try_reserve(bytes)
                .map(|r| self.held = Some(r))
                .is_some(),
        };
        if grown {
            self.covered = covered;
        }
        grown
    }
}

/// The refusal of a throttled IP, after the slowdown.
async fn throttled(wait: Duration) -> Refusal {
    tokio::time::sleep(super::auth_guard::SLOWDOWN).await;
    Refusal::AuthThrottled {
        retry_after: wait.as_secs().max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pipeline::Chain;

    /// A decoder as a stream protocol would have: one event per byte, no HTTP anywhere.
    struct PerByte;
    impl Decode for PerByte {
        fn decode(
            self,
            payload: &[u8],
            limits: PayloadLimits,
            admit: &mut dyn FnMut(usize) -> bool,
        ) -> Result<Vec<Event>, Refusal> {
            let mut out = Vec::new();
            for (i, b) in payload.iter().enumerate() {
                if !admit(i) {
                    return Err(Refusal::Busy);
                }
                out.push(Event::from_message(
                    (*b as char).to_string(),
                    limits.received_at_ms,
                ));
            }
            Ok(out)
        }
    }

    /// A core whose budget holds `budget` bytes, for refusals decided before the chain.
    fn core(budget: &str) -> Arc<Core> {
        let text = format!(
            "listeners: [{{name: i, address: \"127.0.0.1:0\", protocol: http}}]\n\
             limits: {{max_body_bytes: 1KiB, max_inflight_request_bytes: {budget}, admission_wait: 0s}}\n\
             archive: {{enabled: false, store: {{type: local, root: /nonexistent}}}}\n\
             backends: [{{name: b, type: file, path: /dev/null}}]\n\
             tenants: [{{name: t, api_keys: [k], backend: b}}]\n"
        );
        let config = Config::parse(&text, "t.yaml").unwrap();
        let mut tenants = Tenants::default();
        let tenant = Arc::new(Tenant {
            name: "t".into(),
            chain: Chain::for_test(),
        });
        tenants.add_client_names(&["agent.t.example".to_string()], &tenant);
        tenants.add(&config.tenants[0].api_keys, tenant);
        let other = Arc::new(Tenant {
            name: "u".into(),
            chain: Chain::for_test(),
        });
        tenants.add(&[serde_yaml::from_str("k2").unwrap()], other);
        Core::new(tenants, config.limits.clone())
    }

    fn origin(client: Option<&str>) -> Origin {
        Origin {
            listener: "i".into(),
            peer: "192.0.2.7:5000".parse().unwrap(),
            key_header: None,
            client: client.map(|n| {
                Arc::new(crate::tenant::ClientIdentity {
                    names: vec!["unmapped.example".into(), n.into()],
                })
            }),
        }
    }

    #[tokio::test]
    async fn a_client_certificate_names_its_tenant_and_a_key_must_agree() {
        let core = core("64KiB");
        let cert = origin(Some("agent.t.example"));
        let t = core.authenticate(&cert, None, "").await.unwrap();
        assert_eq!(&*t.name, "t", "no key needed");
        assert_eq!(
            &*core.authenticate(&cert, Some("k"), "").await.unwrap().name,
            "t"
        );
        assert!(matches!(
            core.authenticate(&cert, Some("k2"), "").await,
            Err(Refusal::KeyCertificateMismatch)
        ));
        assert!(matches!(
            core.authenticate(&cert, Some("nope"), "").await,
            Err(Refusal::UnknownKey)
        ));
        // A certificate no tenant maps: its key decides.
        let unmapped = origin(Some("nobody.example"));
        assert_eq!(
            &*core
                .authenticate(&unmapped, Some("k2"), "")
                .await
                .unwrap()
                .name,
            "u"
        );
        assert!(matches!(
            core.authenticate(&unmapped, None, "h").await,
            Err(Refusal::MissingKey { .. })
        ));
    }

    #[tokio::test]
    async fn refusals_before_the_chain_need_no_transport() {
        let core = core("64KiB");
        let from = origin(None);
        assert!(matches!(
            core.authenticate(&from, None, "in the handshake").await,
            Err(Refusal::MissingKey {
                hint: "in the handshake"
            })
        ));
        assert!(matches!(
            core.authenticate(&from, Some("nope"), "").await,
            Err(Refusal::UnknownKey)
        ));
        let tenant = core.authenticate(&from, Some("k"), "").await.unwrap();
        assert!(matches!(
            core.reserve_payload(Some(2048)).await,
            Err(Refusal::BodyTooLarge { max: 1024 })
        ));
        // A frame of 1,000 one-byte events would take more than half the budget as events.
        let payload = Payload {
            bytes: Bytes::from(vec![b'x'; 1000]),
            encoding: Encoding::Identity,
            reservation: core.reserve_payload(Some(1000)).await.unwrap(),
        };
        let r = core
            .take(Intake::Generic, tenant.clone(), payload, PerByte)
            .await
            .unwrap_err();
        assert!(matches!(r, Refusal::EventsNeverFit { .. }), "{r}");
        // Everything it held was given back: the whole budget can be reserved again.
        assert!(core.budget.try_reserve(core.budget.capacity()).is_some());
        let held = core.reserve_payload(None).await.unwrap();
        let all = core
            .budget
            .try_reserve(core.budget.capacity() - held.bytes());
        assert!(all.is_some());
        // No room and no time to wait for it: refused, its body never read.
        assert!(matches!(
            core.reserve_payload(Some(10)).await,
            Err(Refusal::Busy)
        ));
    }
}
