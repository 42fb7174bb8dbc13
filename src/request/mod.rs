//! What keygate knows of a request before a handler reads it, for the
//! server's handlers and the Administration API alike: the client's address
//! (set by the listener, through trusted proxies), and the body, read whole
//! within the size limit and the body deadline (`deadline`), with
//! OpenAI-shaped 413 and 408 answers.

mod deadline;

use std::net::IpAddr;

use axum::body::Body;
use ipnet::IpNet;

use crate::dialect::ApiError;

pub use deadline::request_body_deadline;

/// The client's address: the peer, or, when the peer is a trusted proxy, the
/// nearest untrusted address in `X-Forwarded-For`.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = forwarded_for.unwrap_or("").split(',').rev().filter_map(|h| h.trim().parse::<IpAddr>().ok());
    let mut last = peer;
    for hop in hops {
        last = hop;
        if !is_trusted(&hop) {
            return hop;
        }
    }
    last
}

/// Reads a request body up to `limit` bytes; more is OpenAI-shaped 413, a
/// body past its deadline 408.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(error) => {
            let too_large =
                std::error::Error::source(&error).is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::BodyTooLarge { limit })
            } else if let Some(timeout) = deadline::timed_out(&error) {
                Err(ApiError::RequestTimeout { timeout })
            } else {
                tracing::debug!(%error, "client body read failed");
                Err(ApiError::BadRequest { message: "The request body could not be read.".into(), param: None })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_ip;

    #[test]
    fn forwarded_for_is_trusted_only_from_configured_proxies() {
        let proxy: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_ip(ip("1.2.3.4"), Some("9.9.9.9"), &[proxy]), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("9.9.9.9, 10.0.0.2"), &[proxy]), ip("9.9.9.9"));
        assert_eq!(client_ip(ip("10.0.0.1"), None, &[proxy]), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("garbage"), &[proxy]), ip("10.0.0.1"));
    }
}
