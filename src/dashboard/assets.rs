//! The dashboard's files, embedded in the binary at build time (`ui/`): no
//! CDN and no network at run time.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../ui/app.js") },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../../ui/app.css") },
    Asset {
        name: "uplot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uplot.iife.min.js"),
    },
    Asset {
        name: "uplot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/vendor/uplot.min.css"),
    },
];

const INDEX: &str = include_str!("../../ui/index.html");

/// The app's one page.
pub fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response()
}

/// `GET /ui/assets/{file}`. Revalidated on each load (they change with the
/// binary), which costs a round trip and saves a stale app after an upgrade.
pub async fn serve(Path(file): Path<String>, headers: http::HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let etag = etag(asset.body);
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn etag(body: &[u8]) -> String {
    format!("\"{:08x}\"", crc32fast::hash(body))
}
