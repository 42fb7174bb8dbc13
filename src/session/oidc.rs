//! Single sign-on through OpenID Connect: the authorization code flow with
//! PKCE (S256), a state bound to the browser, a nonce bound to the ID token.
//! The ID token's signature is checked against the provider's published keys
//! (RS256 or ES256), then its issuer, audience, expiry and nonce; the email
//! must be verified, from the ID token or else from the userinfo endpoint.
//!
//! The provider's discovery document and keys are fetched when first needed
//! and kept; the keys are fetched again when a token names one not yet seen
//! (the provider rotated them).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::store::SsoLogin;
use crate::time::Timestamp;

/// How long a sign-in may take between the redirect and the callback.
pub const LOGIN_TTL_SECONDS: i64 = 600;
/// How far the provider's clock may be from ours.
const CLOCK_SKEW_SECONDS: i64 = 120;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The provider and this gateway's registration with it.
#[derive(Clone)]
pub struct SsoConfig {
    /// The issuer URL, exactly as the provider's ID tokens name it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// This gateway's `/ui/sso/callback`, as registered with the provider.
    pub redirect_url: String,
}

impl std::fmt::Debug for SsoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SsoConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"..")
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

/// Why a sign-in failed. The text is shown on the sign-in page: it names no
/// secret and nothing the provider sent beyond its error code.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("the identity provider could not be reached ({0}); try again, or sign in with an admin key")]
    Unreachable(String),
    #[error("the identity provider answered something unexpected: {0}")]
    Provider(String),
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
    #[error("the ID token is not valid: {0}")]
    InvalidToken(&'static str),
    #[error("the identity provider did not vouch for an email address (email_verified is not true)")]
    UnverifiedEmail,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: String,
    pub name: Option<String>,
}

/// A sign-in begun: where to send the browser, what to store, and the login
/// id for the browser's cookie (its hash is `login.login_hash`).
pub struct Started {
    pub authorize_url: String,
    pub login: SsoLogin,
    pub login_id: String,
}

pub struct Sso {
    config: SsoConfig,
    http: reqwest::Client,
    discovery: tokio::sync::RwLock<Option<Discovery>>,
    keys: tokio::sync::RwLock<Vec<Jwk>>,
}

impl Sso {
    pub fn new(config: SsoConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { config, http, discovery: Default::default(), keys: Default::default() })
    }

    pub fn config(&self) -> &SsoConfig {
        &self.config
    }

    async fn discovery(&self) -> Result<Discovery, SsoError> {
        if let Some(d) = self.discovery.read().await.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let found: Discovery = self.get_json(&url).await?;
        if found.issuer != self.config.issuer {
            return Err(SsoError::Provider(format!(
                "its discovery document names the issuer `{}`, not `{}` as configured",
                found.issuer, self.config.issuer
            )));
        }
        *self.discovery.write().await = Some(found.clone());
        Ok(found)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, SsoError> {
        let response = self.http.get(url).send().await.map_err(|e| SsoError::Unreachable(without_url(&e)))?;
        if !response.status().is_success() {
            return Err(SsoError::Provider(format!("{url} answered HTTP {}", response.status().as_u16())));
        }
        response.json().await.map_err(|_| SsoError::Provider(format!("{url} did not answer the JSON expected")))
    }

    /// Begins a sign-in that returns to `next_path`.
    pub async fn start(&self, next_path: &str, now: Timestamp) -> Result<Started, SsoError> {
        let discovery = self.discovery().await?;
        let state = super::random_token(24);
        let nonce = super::random_token(24);
        let verifier = super::random_token(32);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let login_id = super::random_token(32);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", "openid email profile")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if discovery.authorization_endpoint.contains('?') { '&' } else { '?' };
        Ok(Started {
            authorize_url: format!("{}{separator}{query}", discovery.authorization_endpoint),
            login: SsoLogin {
                login_hash: login_hash(&login_id),
                state,
                verifier,
                nonce,
                next_path: next_path.to_owned(),
                created_at: now,
            },
            login_id,
        })
    }

    /// Exchanges the callback's `code` for tokens and returns the verified identity.
    pub async fn finish(&self, code: &str, login: &SsoLogin, now: Timestamp) -> Result<Identity, SsoError> {
        let discovery = self.discovery().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_url.as_str()),
            ("code_verifier", login.verifier.as_str()),
        ];
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .basic_auth(form_component(&self.config.client_id), Some(form_component(&self.config.client_secret)))
            .form(&form)
            .send()
            .await
            .map_err(|e| SsoError::Unreachable(without_url(&e)))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.map_err(|_| SsoError::Provider("the token endpoint did not answer JSON".into()))?;
        if !status.is_success() {
            let code = body["error"].as_str().unwrap_or("unknown error");
            return Err(SsoError::Refused(format!("{code} (HTTP {})", status.as_u16())));
        }
        let id_token = body["id_token"].as_str().ok_or(SsoError::InvalidToken("the provider sent no ID token"))?;
        let claims = self.verify(id_token, &discovery, now).await?;
        if claims["nonce"].as_str() != Some(login.nonce.as_str()) {
            return Err(SsoError::InvalidToken("its nonce is not the one this sign-in sent"));
        }
        let subject = claims["sub"].as_str().ok_or(SsoError::InvalidToken("it names no subject"))?.to_owned();
        // A provider that keeps scope claims out of the ID token serves them at userinfo.
        let claims = if claims.get("email").is_some() {
            claims
        } else {
            let access = body["access_token"].as_str().ok_or(SsoError::UnverifiedEmail)?;
            let endpoint = discovery.userinfo_endpoint.as_deref().ok_or(SsoError::UnverifiedEmail)?;
            let info = self.userinfo(endpoint, access).await?;
            if info["sub"].as_str() != Some(subject.as_str()) {
                return Err(SsoError::Provider("userinfo describes another subject than the ID token".into()));
            }
            info
        };
        let verified =
            claims["email_verified"].as_bool() == Some(true) || claims["email_verified"].as_str() == Some("true");
        let email = claims["email"].as_str().filter(|e| e.contains('@')).ok_or(SsoError::UnverifiedEmail)?;
        if !verified {
            return Err(SsoError::UnverifiedEmail);
        }
        Ok(Identity { subject, email: email.to_owned(), name: claims["name"].as_str().map(str::to_owned) })
    }

    async fn userinfo(&self, endpoint: &str, access_token: &str) -> Result<serde_json::Value, SsoError> {
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .send()
            .await
            .map_err(|e| SsoError::Unreachable(without_url(&e)))?;
        if !response.status().is_success() {
            return Err(SsoError::Provider(format!("userinfo answered HTTP {}", response.status().as_u16())));
        }
        response.json().await.map_err(|_| SsoError::Provider("userinfo did not answer JSON".into()))
    }

    /// The ID token's claims, once its signature, issuer, audience and times check out.
    async fn verify(&self, token: &str, discovery: &Discovery, now: Timestamp) -> Result<serde_json::Value, SsoError> {
        let jwt = Jwt::parse(token)?;
        let key = match self.key_for(&jwt).await {
            Some(key) => key,
            None => {
                // Keys rotate: fetch them again once for a token that names a new one.
                let fresh: JwkSet = self.get_json(&discovery.jwks_uri).await?;
                *self.keys.write().await = fresh.keys;
                self.key_for(&jwt).await.ok_or(SsoError::InvalidToken("no published key of the provider signed it"))?
            }
        };
        jwt.verify_signature(&key)?;
        check_claims(&jwt.claims, &self.config, now)?;
        Ok(jwt.claims)
    }

    async fn key_for(&self, jwt: &Jwt) -> Option<Jwk> {
        let keys = self.keys.read().await;
        keys.iter()
            .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == jwt.alg))
            .filter(|k| k.kty == if jwt.alg == "RS256" { "RSA" } else { "EC" })
            .find(|k| jwt.kid.is_none() || k.kid == jwt.kid)
            .cloned()
    }
}

/// The hash under which a sign-in in progress is stored.
pub fn login_hash(login_id: &str) -> String {
    hex::encode(Sha256::digest(login_id.as_bytes()))
}

/// RFC 6749 §2.3.1: the client id and secret are form-encoded before HTTP Basic.
fn form_component(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// reqwest's error without the URL (which may carry a query).
fn without_url(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "no answer in time".into()
    } else if error.is_connect() {
        "connection refused or no route".into()
    } else {
        "the connection failed".into()
    }
}

struct Jwt {
    alg: String,
    kid: Option<String>,
    signed: String,
    signature: Vec<u8>,
    claims: serde_json::Value,
}

impl Jwt {
    fn parse(token: &str) -> Result<Self, SsoError> {
        let malformed = SsoError::InvalidToken("it is not a signed JWT");
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed);
        };
        let decode =
            |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| SsoError::InvalidToken("it is not a signed JWT"));
        let header: serde_json::Value =
            serde_json::from_slice(&decode(header)?).map_err(|_| SsoError::InvalidToken("its header is not JSON"))?;
        let claims: serde_json::Value =
            serde_json::from_slice(&decode(payload)?).map_err(|_| SsoError::InvalidToken("its claims are not JSON"))?;
        let alg = header["alg"].as_str().unwrap_or_default().to_owned();
        if alg != "RS256" && alg != "ES256" {
            // `none` and HMAC algorithms among them: only the provider's public keys are trusted.
            return Err(SsoError::InvalidToken("it is signed with an algorithm other than RS256 or ES256"));
        }
        Ok(Self {
            alg,
            kid: header["kid"].as_str().map(str::to_owned),
            signed: token[..token.len() - signature.len() - 1].to_owned(),
            signature: decode(signature)?,
            claims,
        })
    }

    fn verify_signature(&self, key: &Jwk) -> Result<(), SsoError> {
        use ring::signature;
        let bad_key = SsoError::Provider("one of its published keys cannot be read".into());
        let decode = |v: &Option<String>| v.as_deref().and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
        let verified = match self.alg.as_str() {
            "RS256" => {
                let (Some(n), Some(e)) = (decode(&key.n), decode(&key.e)) else { return Err(bad_key) };
                signature::RsaPublicKeyComponents { n: &n, e: &e }.verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    self.signed.as_bytes(),
                    &self.signature,
                )
            }
            _ => {
                let (Some(x), Some(y)) = (decode(&key.x), decode(&key.y)) else { return Err(bad_key) };
                if key.crv.as_deref() != Some("P-256") || x.len() != 32 || y.len() != 32 {
                    return Err(bad_key);
                }
                let point = [&[4u8][..], &x, &y].concat();
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(self.signed.as_bytes(), &self.signature)
            }
        };
        verified.map_err(|_| SsoError::InvalidToken("its signature does not verify"))
    }
}

fn check_claims(claims: &serde_json::Value, config: &SsoConfig, now: Timestamp) -> Result<(), SsoError> {
    if claims["iss"].as_str() != Some(config.issuer.as_str()) {
        return Err(SsoError::InvalidToken("another issuer made it"));
    }
    let audience_ok = match &claims["aud"] {
        serde_json::Value::String(aud) => aud == &config.client_id,
        serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(config.client_id.as_str())),
        _ => false,
    };
    if !audience_ok {
        return Err(SsoError::InvalidToken("it was issued to another client"));
    }
    if claims["azp"].as_str().is_some_and(|azp| azp != config.client_id) {
        return Err(SsoError::InvalidToken("it was issued to another client"));
    }
    let exp = claims["exp"].as_i64().ok_or(SsoError::InvalidToken("it has no expiry"))?;
    if exp + CLOCK_SKEW_SECONDS <= now {
        return Err(SsoError::InvalidToken("it has expired"));
    }
    if claims["iat"].as_i64().is_some_and(|iat| iat - CLOCK_SKEW_SECONDS > now) {
        return Err(SsoError::InvalidToken("it was issued in the future"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> SsoConfig {
        SsoConfig {
            issuer: "https://id.example".into(),
            client_id: "keygate".into(),
            client_secret: "s".into(),
            redirect_url: "https://gw.example/ui/sso/callback".into(),
        }
    }

    #[test]
    fn claims_must_name_the_issuer_the_client_and_a_live_expiry() {
        let good = json!({"iss": "https://id.example", "aud": "keygate", "exp": 2_000, "iat": 1_000});
        assert!(check_claims(&good, &config(), 1_500).is_ok());
        let mut other = good.clone();
        other["iss"] = json!("https://evil.example");
        assert!(check_claims(&other, &config(), 1_500).is_err());
        let mut other = good.clone();
        other["aud"] = json!(["someone-else"]);
        assert!(check_claims(&other, &config(), 1_500).is_err());
        let mut listed = good.clone();
        listed["aud"] = json!(["someone-else", "keygate"]);
        assert!(check_claims(&listed, &config(), 1_500).is_ok());
        assert!(check_claims(&good, &config(), 2_000 + CLOCK_SKEW_SECONDS).is_err());
        let mut no_exp = good;
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(check_claims(&no_exp, &config(), 1_500).is_err());
    }

    #[test]
    fn tokens_signed_with_none_or_a_shared_secret_are_refused() {
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = part(json!({"iss": "https://id.example"}));
        for alg in ["none", "HS256"] {
            let token = format!("{}.{claims}.", part(json!({"alg": alg})));
            assert!(matches!(Jwt::parse(&token), Err(SsoError::InvalidToken(_))), "{alg}");
        }
        assert!(Jwt::parse("a.b").is_err());
        assert!(Jwt::parse("a.b.c.d").is_err());
    }

    #[test]
    fn an_es256_signature_verifies_against_its_jwk_and_not_after_a_change() {
        use ring::rand::SystemRandom;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        let jwk = Jwk {
            kty: "EC".into(),
            kid: Some("k1".into()),
            alg: Some("ES256".into()),
            usage: Some("sig".into()),
            n: None,
            e: None,
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode(&public[1..33])),
            y: Some(URL_SAFE_NO_PAD.encode(&public[33..65])),
        };
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", part(json!({"alg": "ES256", "kid": "k1"})), part(json!({"sub": "u1"})));
        let signature = pair.sign(&rng, signed.as_bytes()).unwrap();
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        assert!(Jwt::parse(&token).unwrap().verify_signature(&jwk).is_ok());
        let forged = format!("{}.{}", part(json!({"alg": "ES256", "kid": "k1"})), part(json!({"sub": "admin"})));
        let forged = format!("{forged}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()));
        assert!(Jwt::parse(&forged).unwrap().verify_signature(&jwk).is_err());
    }
}
