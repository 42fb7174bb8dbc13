//! What a data-plane request asks for, in one canonical form whatever door it
//! came through: the OpenAI path (`/v1/chat/completions`), the query to pass
//! on, an Azure deployment when the URL named one, and the client's dialect.
//!
//! The Azure front door builds it from Azure URLs (`/openai/deployments/{d}/...`,
//! `/openai/v1/...`, `/openai/...`), checks `api-version` as Azure does, and
//! renders every error of the request in Azure's shape. After it, one pipeline
//! (auth, limits, upstream, metering) serves both dialects.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Uri};

use crate::auth::Denial;
use crate::dialect::{ApiError, Dialect};
use crate::proxy::is_forwarded_method;
use crate::state::AppState;

mod canonical;

pub use canonical::{canonical_path, normalize, PathError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The OpenAI path, `/v1/...`.
    pub path: String,
    /// The query to forward (Azure's `api-version` removed).
    pub query: Option<String>,
    /// The deployment an Azure classic URL named.
    pub deployment: Option<String>,
    pub dialect: Dialect,
    /// The api-version the client sent (Azure), for error texts.
    pub api_version: Option<String>,
}

impl Route {
    /// An OpenAI URL; `Err` when its path has no canonical form.
    pub fn openai(uri: &Uri) -> Result<Self, PathError> {
        Ok(Self {
            path: canonical_path(uri.path())?,
            query: uri.query().map(str::to_owned),
            deployment: None,
            dialect: Dialect::OpenAi,
            api_version: None,
        })
    }

    /// `path?query` relative to the `/v1` root, as upstreams are addressed.
    pub fn relative(&self) -> String {
        let path = self.path.strip_prefix("/v1").unwrap_or(&self.path);
        match &self.query {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path.to_owned(),
        }
    }
}

/// The data plane's first phase, route and canonicalise, before any key is
/// looked at: the canonical path chooses the scope and is what is forwarded.
/// keygate's own namespaces, paths without a canonical form and methods such
/// as TRACE and CONNECT never leave. Leaves the request carrying its
/// [`Route`]: an Azure URL's, set by [`azure_front_door`], or its OpenAI one.
pub fn canonicalise(req: &mut Request) -> Result<(), ApiError> {
    if normalize(req.uri().path()).is_err() || !is_forwarded_method(req.method()) {
        return Err(invalid_url(req));
    }
    if req.extensions().get::<Route>().is_none() {
        let route = Route::openai(req.uri()).map_err(|_| invalid_url(req))?;
        req.extensions_mut().insert(route);
    }
    Ok(())
}

/// OpenAI's answer to a URL keygate does not serve.
pub fn invalid_url(req: &Request) -> ApiError {
    ApiError::InvalidUrl { method: req.method().clone(), path: req.uri().path().to_owned() }
}

/// Parses an Azure URL; `Err` is the error Azure itself would give. The
/// OpenAI path it maps to is canonical ([`canonical_path`]), so keygate's own
/// namespaces are as unreachable through Azure URLs as through OpenAI ones.
pub fn parse_azure(uri: &Uri, api_versions: &[String]) -> Result<Route, ApiError> {
    let path = uri.path();
    let canonical = |openai: String| canonical_path(&openai).map_err(|_| ApiError::ResourceNotFound);
    let mut api_version = None;
    let mut rest = Vec::new();
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if name == "api-version" {
            api_version = Some(value.into_owned());
        } else {
            rest.push((name.into_owned(), value.into_owned()));
        }
    }
    let query =
        (!rest.is_empty()).then(|| form_urlencoded::Serializer::new(String::new()).extend_pairs(&rest).finish());
    if let Some(v1) = path.strip_prefix("/openai/v1/") {
        // The v1 surface takes no dated api-version.
        if api_version.as_deref().is_some_and(|v| !matches!(v, "preview" | "latest" | "v1")) {
            return Err(ApiError::ApiVersionNotSupported);
        }
        return Ok(Route {
            path: canonical(format!("/v1/{v1}"))?,
            query,
            deployment: None,
            dialect: Dialect::Azure,
            api_version,
        });
    }
    let rest_path = path.strip_prefix("/openai/").ok_or(ApiError::ResourceNotFound)?;
    let version =
        api_version.clone().filter(|v| api_versions.iter().any(|a| a == v)).ok_or(ApiError::ResourceNotFound)?;
    if let Some(deployed) = rest_path.strip_prefix("deployments/") {
        let (deployment, op) = deployed.split_once('/').ok_or(ApiError::ResourceNotFound)?;
        let deployment = percent_decode(deployment);
        if deployment.is_empty() || op.is_empty() {
            return Err(ApiError::ResourceNotFound);
        }
        return Ok(Route {
            path: canonical(format!("/v1/{op}"))?,
            query,
            deployment: Some(deployment),
            dialect: Dialect::Azure,
            api_version: Some(version),
        });
    }
    Ok(Route {
        path: canonical(format!("/v1/{rest_path}"))?,
        query,
        deployment: None,
        dialect: Dialect::Azure,
        api_version: Some(version),
    })
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("d={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Middleware on `/openai/*`: builds the [`Route`], and answers every error of
/// the request the way Azure does, with Azure's headers.
pub async fn azure_front_door(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let client_request_id = req.headers().get("x-ms-client-request-id").cloned();
    let apim = HeaderValue::from_str(&uuid_v4()).unwrap_or_else(|_| HeaderValue::from_static("0"));
    let route = parse_azure(req.uri(), &state.settings.azure_api_versions);
    let (path, api_version) = match &route {
        Ok(r) => (r.path.clone(), r.api_version.clone().unwrap_or_default()),
        Err(_) => (req.uri().path().to_owned(), String::new()),
    };
    let mut response = match route {
        Ok(route) => {
            req.extensions_mut().insert(route);
            next.run(req).await
        }
        Err(error) => error.into_response(),
    };
    if let Some(error) = response.extensions().get::<Arc<ApiError>>().cloned() {
        let denial = response.extensions().get::<Arc<Denial>>().cloned();
        response = crate::dialect::render_azure(&error, &path, &api_version);
        if let Some(denial) = denial {
            response.extensions_mut().insert(denial);
        }
    }
    let headers = response.headers_mut();
    headers.insert("apim-request-id", apim.clone());
    headers.insert("x-ms-client-request-id", client_request_id.unwrap_or(apim));
    if let Ok(region) = HeaderValue::from_str(&state.settings.azure_region) {
        headers.insert("x-ms-region", region);
    }
    response
}

fn uuid_v4() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions() -> Vec<String> {
        vec!["2024-10-21".into(), "2024-02-15-preview".into()]
    }

    fn parse(url: &str) -> Result<Route, ApiError> {
        parse_azure(&url.parse().unwrap(), &versions())
    }

    fn request(method: http::Method, uri: &str) -> Request {
        http::Request::builder().method(method).uri(uri).body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn canonicalising_gives_an_openai_url_its_route_and_keeps_the_front_doors() {
        let mut req = request(http::Method::POST, "/v1/chat/%63ompletions?x=1");
        canonicalise(&mut req).unwrap();
        let route = req.extensions().get::<Route>().unwrap();
        assert_eq!((route.path.as_str(), route.query.as_deref()), ("/v1/chat/completions", Some("x=1")));
        assert_eq!(route.dialect, Dialect::OpenAi);

        let mut azure = request(http::Method::POST, "/openai/deployments/d/chat/completions?api-version=2024-10-21");
        let routed = parse_azure(azure.uri(), &versions()).unwrap();
        azure.extensions_mut().insert(routed.clone());
        canonicalise(&mut azure).unwrap();
        assert_eq!(azure.extensions().get::<Route>(), Some(&routed));
    }

    #[test]
    fn canonicalising_refuses_what_must_never_leave() {
        for (method, uri) in [
            (http::Method::POST, "/v1/keygate/key"),
            (http::Method::GET, "/v1/organization/projects"),
            (http::Method::GET, "/v1/a/../organization/projects"),
            (http::Method::TRACE, "/v1/models"),
        ] {
            let mut req = request(method.clone(), uri);
            match canonicalise(&mut req) {
                Err(ApiError::InvalidUrl { method: refused, path }) => {
                    assert_eq!((refused, path.as_str()), (method, uri))
                }
                other => panic!("{uri}: {other:?}"),
            }
            assert!(req.extensions().get::<Route>().is_none(), "{uri}");
        }
    }

    #[test]
    fn classic_deployment_urls_become_openai_routes() {
        let r = parse("/openai/deployments/prod%2Dgpt4o/chat/completions?api-version=2024-10-21&x=1").unwrap();
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.deployment.as_deref(), Some("prod-gpt4o"));
        assert_eq!(r.relative(), "/chat/completions?x=1");
        assert_eq!(r.api_version.as_deref(), Some("2024-10-21"));
        let models = parse("/openai/models?api-version=2024-02-15-preview").unwrap();
        assert_eq!((models.path.as_str(), models.deployment), ("/v1/models", None));
    }

    #[test]
    fn api_versions_are_checked_as_azure_does() {
        assert!(matches!(parse("/openai/deployments/d/chat/completions"), Err(ApiError::ResourceNotFound)));
        assert!(matches!(
            parse("/openai/deployments/d/chat/completions?api-version=0613"),
            Err(ApiError::ResourceNotFound)
        ));
        assert!(matches!(
            parse("/openai/v1/chat/completions?api-version=2024-10-21"),
            Err(ApiError::ApiVersionNotSupported)
        ));
        assert_eq!(parse("/openai/v1/chat/completions").unwrap().path, "/v1/chat/completions");
        assert!(parse("/openai/v1/responses?api-version=preview").is_ok());
        assert!(matches!(parse("/openai/deployments/d?api-version=2024-10-21"), Err(ApiError::ResourceNotFound)));
    }

    #[test]
    fn keygates_own_namespaces_are_not_found_through_azure_urls() {
        for url in [
            "/openai/v1/organization/admin_api_keys",
            "/openai/v1/Organization/projects",
            "/openai/v1/keygate/echo-auth",
            "/openai/v1/keygate",
            "/openai/organization/projects?api-version=2024-10-21",
            "/openai/%6Frganization?api-version=2024-10-21",
            "/openai/deployments/d/organization/projects?api-version=2024-10-21",
            "/openai/deployments/d/../../v1/organization?api-version=2024-10-21",
        ] {
            assert!(matches!(parse(url), Err(ApiError::ResourceNotFound)), "{url}");
        }
    }

    #[test]
    fn apim_request_ids_are_uuids() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
