//! One client connection's lifetime: the cap on open connections, the
//! timeouts that close slow or idle connections, and the loop that drives a
//! connection until it ends, sits idle too long, or the server shuts down.
//!
//! Owns: [`ConnectionLimits`], per-connection request tracking (a guard that
//! each response body holds until it is sent or dropped), the idle watchdog,
//! and the rate-limited log of connections refused at the cap. Leaves to
//! hyper its HTTP/1 header read timer (set up in `serve`), and to the
//! `deadline` module the time a request body may take.
//!
//! HTTP/2 has no header timer in hyper; a connection with no stream in flight
//! is still closed by the watchdog. No HTTP/2 keep-alive pings are sent, so a
//! peer that vanishes mid-stream is found only by TCP.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long a client may take and how many connections may be open; from
/// the `[server]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head (request line and headers) must arrive whole within
    /// this; a connection that has not sent its first request by then closes.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight closes after this long.
    pub idle_timeout: Duration,
    /// Connections past this many are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

// === request tracking ===

/// What the idle watchdog knows about one connection's requests.
pub(super) struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `born` at which the last request in flight ended.
    idle_since_ms: AtomicU64,
    /// Whether the connection has sent a request yet: until then it gets the
    /// header read timeout, since it owes a request head.
    served: AtomicBool,
    /// Woken when the last request in flight ends.
    went_idle: Notify,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            went_idle: Notify::new(),
        })
    }

    /// Marks a request in flight until the returned guard drops; the
    /// response body carries it, so a streamed answer counts until its end.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in flight for its
    /// allowance (header read timeout before its first request, idle timeout
    /// after); never while a request is in flight, however long it lasts.
    async fn idle_expired(&self, limits: &ConnectionLimits) {
        loop {
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // A request ending before this wait leaves a permit, so the
                // wake-up is not lost.
                self.went_idle.notified().await;
                continue;
            }
            let allowance =
                if self.served.load(Ordering::Relaxed) { limits.idle_timeout } else { limits.header_read_timeout };
            let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
            let deadline = self.born + since + allowance;
            if Instant::now() >= deadline {
                return;
            }
            // A request ending meanwhile moves the deadline (and the first one
            // ending swaps the header allowance for the idle one, which may be
            // shorter): look again then.
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.went_idle.notified() => {}
            }
        }
    }
}

/// One request in flight on a connection (see [`Activity::begin`]).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the count drops, so a watchdog that sees no request
        // in flight also sees when the last one ended.
        activity.idle_since_ms.store(now, Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.went_idle.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// has sent it (or dropped it, when the client went away).
pub(super) struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(super) fn new(body: B, in_flight: InFlight) -> Self {
        Self { body, _in_flight: in_flight }
    }
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === driving a connection ===

/// Serves `conn` to its end. Server shutdown (`drain` changes or its sender
/// goes) and the idle watchdog both ask it to finish gracefully: requests in
/// flight complete, no new ones are read.
pub(super) async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    limits: &ConnectionLimits,
    mut drain: watch::Receiver<()>,
) -> Result<(), C::Error> {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = drain.changed() => {}
        () = activity.idle_expired(limits) => tracing::trace!("closing an idle connection"),
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

// === the cap ===

/// Counts connections refused at the cap and logs at most one line per
/// interval, so a flood does not become a flood of log lines.
pub(super) struct Refusals {
    since_log: u64,
    last_log: Option<std::time::Instant>,
}

impl Refusals {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    pub(super) fn new() -> Self {
        Self { since_log: 0, last_log: None }
    }

    pub(super) fn refused(&mut self, max_connections: usize) {
        metrics::counter!("keygate_connections_refused_total").increment(1);
        self.since_log += 1;
        if self.last_log.is_some_and(|at| at.elapsed() < Self::LOG_EVERY) {
            return;
        }
        tracing::warn!(
            max_connections,
            refused = self.since_log,
            "open connection limit reached: closing new connections (`server.max_connections`)"
        );
        self.since_log = 0;
        self.last_log = Some(std::time::Instant::now());
    }
}
