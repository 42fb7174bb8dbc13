//! Wire dialects: how an error looks to the client. Every failure keygate
//! itself produces is an [`ApiError`]; each dialect renders it in exactly one
//! function (`openai::render`; Azure joins later).

mod openai;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::Method;

use crate::auth::Denial;

pub use openai::render as render_openai;

#[derive(Debug, Clone)]
pub enum ApiError {
    Denied(Denial),
    InvalidUrl {
        method: Method,
        path: String,
    },
    InvalidJson,
    BodyTooLarge {
        limit: usize,
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
    UpstreamUnreachable {
        upstream: String,
    },
    UpstreamTimeout {
        upstream: String,
    },
    Internal,
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
        let denial = match &self {
            Self::Denied(d) => Some(Arc::new(d.clone())),
            _ => None,
        };
        let mut response = render_openai(&self);
        // The response itself has no side effects; the request-id middleware
        // records the private reason it finds here.
        if let Some(denial) = denial {
            response.extensions_mut().insert(denial);
        }
        response
    }
}
