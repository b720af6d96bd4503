//! Senders over plain TCP: syslog (a body of lines written back to back, taken
//! once written: syslog has no answer) and Fluent forward (one Forward message
//! at a time, taken once its ack has come back).
use crate::{Payload, Stats, Target, STOPPED};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The largest ack read: `{"ack": "chunk-N"}` is a few dozen bytes.
const MAX_ACK: usize = 1024;

#[allow(clippy::too_many_arguments)]
pub async fn connection(
    id: usize,
    acked: bool,
    batch: u64,
    mut ticker: Option<tokio::time::Interval>,
    deadline: Instant,
    target: Arc<Target>,
    pool: Arc<Vec<Payload>>,
    stats: Arc<Stats>,
) {
    let mut next = id * 5;
    let mut conn: Option<TcpStream> = None;
    while Instant::now() < deadline && !STOPPED.load(Relaxed) {
        let c = match &mut conn {
            Some(c) => c,
            None => match tokio::time::timeout_at(deadline, TcpStream::connect(&target.addr)).await
            {
                Ok(Ok(c)) => {
                    let _ = c.set_nodelay(true);
                    conn.insert(c)
                }
                Ok(Err(_)) => {
                    stats.io_errors.fetch_add(1, Relaxed);
                    tokio::time::sleep_until(
                        deadline.min(Instant::now() + Duration::from_millis(200)),
                    )
                    .await;
                    continue;
                }
                Err(_) => break,
            },
        };
        if let Some(t) = &mut ticker {
            if tokio::time::timeout_at(deadline, t.tick()).await.is_err() {
                break;
            }
        }
        let payload = &pool[next % pool.len()];
        next += 1;
        let sent = Instant::now();
        stats.requests.fetch_add(1, Relaxed);
        stats
            .wire_bytes_sent
            .fetch_add(payload.wire.len() as u64, Relaxed);
        let result = tokio::time::timeout(Duration::from_secs(30), async {
            c.write_all(&payload.wire).await?;
            if acked {
                read_ack(c).await?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {
                stats.latency.record(sent.elapsed());
                stats.accepted.fetch_add(1, Relaxed);
                stats.events_accepted.fetch_add(batch, Relaxed);
                stats.raw_bytes_accepted.fetch_add(payload.raw_len, Relaxed);
            }
            Ok(Err(_)) | Err(_) => {
                // A refused forward message closes its connection, unacked.
                stats.io_errors.fetch_add(1, Relaxed);
                conn = None;
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.shutdown().await;
    }
}

/// Reads one MessagePack map with an `ack` key.
async fn read_ack(c: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let mut chunk = [0u8; 256];
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = rmp_serde::from_slice::<serde_json::Value>(&buf) {
            return if v.get("ack").is_some() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("not an ack: {v}")))
            };
        }
        if buf.len() > MAX_ACK {
            return Err(std::io::Error::other("no ack within 1 KiB"));
        }
    }
}
