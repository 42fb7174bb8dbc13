//! The request body deadline: a request's body must arrive whole within
//! `server.request_body_timeout_ms` of the request reaching the router, or
//! every reader of it sees an error and the client gets an OpenAI-shaped 408.
//!
//! Owns: the middleware that wraps each request body, and the wrapping body.
//! Bodies are wrapped, not read here, so each handler still reads its body
//! its own way (the data plane's `read_body`, the Administration API's
//! extractors) and none of them can wait on a trickling client forever.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::dialect::ApiError;

/// The error a timed-out body yields to whoever reads it.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {timeout:?}")]
struct BodyTimedOut {
    timeout: Duration,
}

/// Wraps the request body in a deadline, `timeout` (the layer's state). If
/// the deadline fired, the answer is the 408, whatever the handler made of the
/// failed read (the Administration API's extractors would otherwise answer a
/// plain-text 400).
pub async fn request_body_deadline(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    // Bodiless requests (most GETs) need no timer.
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let fired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| Body::new(Deadline::new(body, timeout, Arc::clone(&fired))));
    let response = next.run(req).await;
    if fired.load(Ordering::Relaxed) {
        return ApiError::RequestTimeout { timeout }.into_response();
    }
    response
}

struct Deadline {
    inner: Body,
    timeout: Duration,
    deadline: Instant,
    /// Made on the first read that has to wait, so a body that is already
    /// buffered never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    fired: Arc<AtomicBool>,
}

impl Deadline {
    fn new(inner: Body, timeout: Duration, fired: Arc<AtomicBool>) -> Self {
        Self { inner, timeout, deadline: Instant::now() + timeout, timer: None, fired }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        this.fired.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut { timeout: this.timeout }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` was caused by a body deadline, anywhere in its chain.
pub(super) fn timed_out(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(timed_out) = error.downcast_ref::<BodyTimedOut>() {
            return Some(timed_out.timeout);
        }
        cause = error.source();
    }
    None
}
