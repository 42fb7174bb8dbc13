//! Wire dialects: how an error looks to the client. Every failure keygate
//! itself produces is an [`ApiError`]; each dialect renders it in exactly one
//! function (`openai::render`; Azure joins later).

mod azure;
mod openai;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::Method;

use crate::auth::Denial;

pub use azure::{operation_id, render as render_azure};
pub use openai::{render as render_openai, ErrorResponse};

/// Which wire a client speaks; Azure routes mark their requests with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Azure,
}

/// Per-deployment rendering choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// `errors.hints`: append a safe hint (facts of the presented string only).
    pub hints: bool,
}

/// Renders a denial with `options`, attaching it for the request recorder.
pub fn render_denial(denial: Denial, options: &RenderOptions) -> Response {
    let error = ApiError::Denied(denial.clone());
    let mut response = openai::render_with(&error, options);
    response.extensions_mut().insert(Arc::new(denial));
    response.extensions_mut().insert(Arc::new(error));
    response
}

#[derive(Debug, Clone)]
pub enum ApiError {
    Denied(Denial),
    InvalidUrl {
        method: Method,
        path: String,
    },
    InvalidJson,
    /// A known path with a method it does not take (the router adds an
    /// `Allow` header listing those it does).
    MethodNotAllowed {
        method: Method,
    },
    BodyTooLarge {
        limit: usize,
    },
    /// The request body did not arrive whole within `server.request_body_timeout_ms`.
    RequestTimeout {
        timeout: std::time::Duration,
    },
    /// A request the Administration API cannot accept; `param` names the field.
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// An Administration API object that does not exist.
    NotFound {
        message: String,
    },
    /// A dashboard session that ended (signed out, expired, idle too long).
    SessionEnded,
    /// A request the caller's role or session does not allow (`code` says
    /// which rule: `insufficient_role`, `csrf_token_invalid`).
    Forbidden {
        message: String,
        code: &'static str,
    },
    /// Azure's routing-level 404 (missing or unknown api-version, unknown path).
    ResourceNotFound,
    /// Azure's 400 for a dated api-version on the `/openai/v1` surface.
    ApiVersionNotSupported,
    UpstreamUnreachable {
        upstream: String,
    },
    UpstreamTimeout {
        upstream: String,
    },
    /// No member of an upstream pool served the request (each failed, or was
    /// out of rotation); the attempts are in the request's record.
    UpstreamUnavailable {
        upstream: String,
    },
    /// A client over `limits.leak_reports_per_minute` (`POST /v1/keys/leaked`).
    LeakReportsLimited {
        exceeded: crate::policy::Exceeded,
    },
    Internal,
}

impl ApiError {
    /// The status and code it is answered with (what metering and `keygate
    /// explain` record of it).
    pub fn status_and_code(&self) -> (u16, Option<&'static str>) {
        let (status, _, _, _, code) = openai::parts(self);
        (status.as_u16(), code)
    }
}

impl From<Denial> for ApiError {
    fn from(denial: Denial) -> Self {
        Self::Denied(denial)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(%error, "store error while serving a request");
        Self::Internal
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The response itself has no side effects; the request-id middleware
        // records the private reason it finds in the extensions.
        // The Azure front door re-renders from the attached error.
        match self {
            Self::Denied(denial) => render_denial(denial, &RenderOptions::default()),
            other => {
                let mut response = render_openai(&other);
                response.extensions_mut().insert(Arc::new(other));
                response
            }
        }
    }
}
