//! A connection's two timers, measured on requests rather than bytes:
//! - **idle**: no request in flight for `idle_timeout` since the last one ended
//!   (or since the connection opened). HTTP/2 PING frames (the server's
//!   keep-alive, or a client's) are bytes but not requests, so they keep no
//!   connection open.
//! - **header** (HTTP/1): once the first byte of a request arrives (or the
//!   connection opens), its headers must be complete within `header_read_timeout`
//!   (slowloris). hyper's own header timer also runs between keep-alive requests,
//!   which would close every idle connection at the header timeout, so it is off
//!   and this one is used instead.
//!
//! The service marks requests with [`Activity::begin`]. The timer is re-armed
//! only when it fires or when a request's first byte arrives, so busy
//! connections pay almost nothing.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Requests on one connection, shared by the service and the connection's I/O.
pub struct Activity {
    opened: Instant,
    /// Requests begun so far.
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// When the last request ended, in ms since `opened`.
    last_end_ms: AtomicU64,
}

/// Marks a request in flight until dropped.
pub struct RequestGuard(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        })
    }

    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.opened.elapsed().as_millis() as u64;
        a.last_end_ms.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unknown,
    Http1,
    Http2,
}

pub struct ConnTimers<T> {
    inner: T,
    activity: Arc<Activity>,
    idle: Duration,
    header: Duration,
    kind: Kind,
    /// When the request whose headers are awaited began to arrive (HTTP/1).
    header_started: Option<Instant>,
    /// `activity.started` when last looked at: a change means headers were complete.
    seen_started: u64,
    timer: Pin<Box<Sleep>>,
}

impl<T> ConnTimers<T> {
    pub fn new(inner: T, activity: Arc<Activity>, idle: Duration, header: Duration) -> Self {
        let now = Instant::now();
        ConnTimers {
            inner,
            activity,
            idle,
            header,
            kind: Kind::Unknown,
            // The first request's headers are awaited from the start.
            header_started: Some(now),
            seen_started: 0,
            timer: Box::pin(tokio::time::sleep_until(now + header.min(idle))),
        }
    }

    /// Bytes arrived: learn the protocol, and start the header timer on a new HTTP/1 request.
    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.kind == Kind::Unknown {
            let n = bytes.len().min(H2_PREFACE.len());
            self.kind = if bytes[..n] == H2_PREFACE[..n] {
                self.header_started = None;
                Kind::Http2
            } else {
                Kind::Http1
            };
        }
        if self.kind != Kind::Http1 {
            return;
        }
        self.sync();
        if self.header_started.is_none() && self.activity.in_flight.load(Ordering::Acquire) == 0 {
            let now = Instant::now();
            self.header_started = Some(now);
            let due = now + self.header;
            if due < self.timer.deadline() {
                self.timer.as_mut().reset(due);
            }
        }
    }

    /// A request began since last look: its headers were complete.
    fn sync(&mut self) {
        let started = self.activity.started.load(Ordering::Acquire);
        if started != self.seen_started {
            self.seen_started = started;
            self.header_started = None;
        }
    }

    /// When the connection is to be cut, and why; None while a request is in flight
    /// (its body and answer have their own timeouts).
    fn deadline(&mut self) -> Option<(Instant, &'static str)> {
        self.sync();
        if self.activity.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.header_started {
            Some(t) if self.kind != Kind::Http2 => {
                Some((t + self.header, "request headers not received in time"))
            }
            _ => Some((
                self.activity.idle_since() + self.idle,
                "connection idle for too long",
            )),
        }
    }

    /// Called when the inner I/O is pending: errors once a deadline passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.deadline() {
                Some((due, why)) if now >= due => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                }
                Some((due, _)) => self.timer.as_mut().reset(due),
                None => self.timer.as_mut().reset(now + self.header.min(self.idle)),
            }
        }
        Ok(())
    }

    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.check(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnTimers<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                self.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnTimers<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);
    const HEADER: Duration = Duration::from_secs(10);

    async fn read_err<T: AsyncRead + Unpin>(c: &mut ConnTimers<T>) -> io::Error {
        let mut b = [0u8; 64];
        loop {
            match c.read(&mut b).await {
                Err(e) => return e,
                Ok(0) => panic!("closed without a timeout"),
                Ok(_) => {}
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_request_must_finish_its_headers_in_time() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut c = ConnTimers::new(server, Activity::new(), IDLE, HEADER);
        client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        let start = Instant::now();
        let e = read_err(&mut c).await;
        assert_eq!(e.to_string(), "request headers not received in time");
        assert_eq!(start.elapsed(), HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timeout_applies_not_the_header_one() {
        let (mut client, server) = tokio::io::duplex(1024);
        let activity = Activity::new();
        let mut c = ConnTimers::new(server, activity.clone(), IDLE, HEADER);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut b = [0u8; 64];
        assert!(c.read(&mut b).await.unwrap() > 0);
        // The headers are complete: the service takes the request, answers, ends it.
        drop(activity.begin());
        let ended = Instant::now();
        let e = read_err(&mut c).await;
        assert_eq!(e.to_string(), "connection idle for too long");
        assert_eq!(ended.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_pings_keep_no_connection_open() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut c = ConnTimers::new(server, Activity::new(), IDLE, HEADER);
        let start = Instant::now();
        client.write_all(H2_PREFACE).await.unwrap();
        let pinger = tokio::spawn(async move {
            // A PING frame's worth of bytes every 5 s.
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if client.write_all(&[0u8; 17]).await.is_err() {
                    return;
                }
            }
        });
        let e = read_err(&mut c).await;
        assert_eq!(e.to_string(), "connection idle for too long");
        assert_eq!(start.elapsed(), IDLE);
        pinger.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle() {
        let (_client, server) = tokio::io::duplex(1024);
        let activity = Activity::new();
        let mut c = ConnTimers::new(server, activity.clone(), IDLE, HEADER);
        let guard = activity.begin();
        let mut b = [0u8; 8];
        let r = tokio::time::timeout(IDLE * 3, c.read(&mut b)).await;
        assert!(r.is_err(), "still open while the request runs");
        drop(guard);
        let e = read_err(&mut c).await;
        assert_eq!(e.to_string(), "connection idle for too long");
    }
}
