//! The listener: the accept loop over plain TCP or TLS, the connection cap
//! and timeouts (`connection`), each request's client address, and graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use super::connection::{self, ConnectionLimits};
use crate::request::{client_ip, ClientIp};

/// Serves `app` on `listener` (TLS when `tls` is set) until `shutdown`
/// resolves, then stops accepting and waits up to `grace` for open requests.
/// `limits` caps open connections and closes slow and idle ones.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trusted_proxies: Arc<Vec<IpNet>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    // Every connection holds a receiver; shutdown sends, then waits until
    // all are gone (each connection finishes its requests first).
    let (drain, drained) = tokio::sync::watch::channel(());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's timer runs while a request head is read, and also while a
    // kept-alive HTTP/1 connection waits for its next request: an idle
    // HTTP/1 connection closes after the smaller of the two timeouts.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let permits =
        Arc::new(tokio::sync::Semaphore::new(limits.max_connections.min(tokio::sync::Semaphore::MAX_PERMITS)));
    let mut refusals = connection::Refusals::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // At the cap a new connection is closed at once: waiting for a slot
        // would keep it open, which is what the cap exists to prevent.
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refusals.refused(limits.max_connections);
            drop(stream);
            continue;
        };
        // Answers and stream events leave as they are written: Nagle's
        // algorithm would hold a small event back until the client's delayed
        // ACK (up to 40 ms), on every stream.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let trusted = Arc::clone(&trusted_proxies);
        let activity = connection::Activity::new();
        let tracked = Arc::clone(&activity);
        let service =
            app.clone()
                .map_request(move |mut req: Request<hyper::body::Incoming>| {
                    collapse_leading_slashes(req.uri_mut());
                    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
                    let ip = client_ip(peer.ip(), forwarded, &trusted);
                    req.extensions_mut().insert(ClientIp(ip));
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req
                })
                .map_future(move |answer| {
                    let in_flight = tracked.begin();
                    async move {
                        answer.await.map(|response| response.map(|body| connection::Tracked::new(body, in_flight)))
                    }
                });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let builder = builder.clone();
        let drained = drained.clone();
        let tls = tls.clone();
        #[allow(clippy::disallowed_methods)] // connections are tracked by `drain`
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                // The handshake comes before any request head: without its
                // own limit a silent client would hold the connection.
                Some(acceptor) => match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        connection::drive(conn, &activity, &limits, drained).await
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    connection::drive(conn, &activity, &limits, drained).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(drained);
    let _ = drain.send(());
    tokio::select! {
        () = drain.closed() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown grace elapsed with requests still open"),
    }
}

/// `//openai/...` (older Azure SDKs with a trailing slash on the endpoint)
/// becomes `/openai/...`.
fn collapse_leading_slashes(uri: &mut http::Uri) {
    let Some(pq) = uri.path_and_query() else { return };
    if !pq.as_str().starts_with("//") {
        return;
    }
    let fixed = format!("/{}", pq.as_str().trim_start_matches('/'));
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = fixed.parse().ok();
    if let Ok(rebuilt) = http::Uri::from_parts(parts) {
        *uri = rebuilt;
    }
}

/// Loads a PEM certificate chain and private key for the listener.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open `server.tls_cert` file `{}`", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("`server.tls_cert` file `{}` is not a PEM certificate chain", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("cannot open `server.tls_key` file `{}`", key.display()))?,
    ))
    .with_context(|| format!("`server.tls_key` file `{}` is not a PEM private key", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("`server.tls_key` file `{}` holds no private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn double_leading_slashes_collapse() {
        let mut uri: http::Uri = "//openai/deployments/d/chat/completions?api-version=1".parse().unwrap();
        super::collapse_leading_slashes(&mut uri);
        assert_eq!(uri.to_string(), "/openai/deployments/d/chat/completions?api-version=1");
        let mut plain: http::Uri = "/v1/models".parse().unwrap();
        super::collapse_leading_slashes(&mut plain);
        assert_eq!(plain.to_string(), "/v1/models");
    }
}
