//! Who is acting on the Administration API and what their role lets them
//! reach: an admin key sent as a bearer token, or a dashboard session (a
//! person signed in through single sign-on, or someone who signed in with an
//! admin key). The server works out a `Principal` once per request; the
//! access rule here and the handlers' project filters are the only places a
//! role is enforced, so the dashboard and the API can never disagree.
//!
//! Owns: roles, the principal, the session token (its cookie, its stored
//! hash, the CSRF token derived from it), and single sign-on (`oidc`).

pub mod oidc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::Method;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{Authorized, KeyIndex};
use crate::ids::PublicId;
use crate::store::{SessionHolder, SessionRecord, Store, StoreResult, User};
use crate::time::Timestamp;

/// The session cookie's name over plain http.
pub const COOKIE: &str = "keygate_session";
/// Its name over https: the `__Host-` prefix makes the browser refuse one set
/// by another host (a sibling subdomain) or for a narrower path.
pub const SECURE_COOKIE: &str = "__Host-keygate_session";
/// The header that carries the CSRF token on every state-changing request.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A role in the organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Owner,
    /// Sees everything, changes nothing.
    Reader,
    /// Sees and manages the keys and usage of their own projects only.
    Member,
}

impl Role {
    /// Organization users' roles as stored: OpenAI's `owner` and `reader`,
    /// and keygate's `member`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "owner" => Self::Owner,
            "reader" => Self::Reader,
            "member" => Self::Member,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Reader => "reader",
            Self::Member => "member",
        }
    }
}

/// Who acts.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An admin key: sent as a bearer token, or the key a dashboard session was opened with.
    Key(Authorized),
    /// A person signed in through single sign-on.
    User(User),
}

/// The one who makes an Administration API request, decided once by the server.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    pub role: Role,
    /// A member's projects (`None` for owners and readers: every project).
    pub projects: Option<Vec<String>>,
    /// Where the request came from, for the audit log of a person's actions.
    pub client_ip: Option<String>,
}

/// Why a principal may not make a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A reader tried to change something.
    ReadOnly,
    /// A member asked for something outside their projects' keys and usage.
    NotForMembers,
    /// A member named a project they are not in: answered as if it did not exist.
    NoSuchProject(String),
}

impl Principal {
    /// An admin key's own request: owners of everything.
    pub fn admin_key(authorized: Authorized) -> Self {
        Self { actor: Actor::Key(authorized), role: Role::Owner, projects: None, client_ip: None }
    }

    /// Who did it, in words, for revocation records.
    pub fn name(&self) -> String {
        match &self.actor {
            Actor::Key(a) => format!("admin key `{}` ({})", a.key.name, a.key.id),
            Actor::User(u) => format!("{} <{}> ({})", u.name, u.email, u.id),
        }
    }

    /// The admin key that acts, if a key does.
    pub fn key_id(&self) -> Option<PublicId> {
        match &self.actor {
            Actor::Key(a) => Some(a.key.id),
            Actor::User(_) => None,
        }
    }

    /// The person who acts, if a person does.
    pub fn user_id(&self) -> Option<&str> {
        match &self.actor {
            Actor::User(u) => Some(&u.id),
            Actor::Key(_) => None,
        }
    }

    /// Whether the principal may see the project `id`.
    pub fn sees_project(&self, id: &str) -> bool {
        self.projects.as_ref().is_none_or(|mine| mine.iter().any(|p| p == id))
    }

    /// The projects a listing is limited to: `None` for every project.
    pub fn project_filter(&self) -> Option<&[String]> {
        self.projects.as_deref()
    }

    /// The access rule: may this principal make `method` on `path` at all?
    /// (Lists that span projects are narrowed to a member's own by their handlers.)
    pub fn may(&self, method: &Method, path: &str) -> Result<(), Refusal> {
        let reads = matches!(*method, Method::GET | Method::HEAD);
        match self.role {
            Role::Owner => Ok(()),
            Role::Reader if reads => Ok(()),
            Role::Reader => Err(Refusal::ReadOnly),
            Role::Member => self.member_may(reads, path),
        }
    }

    fn member_may(&self, reads: bool, path: &str) -> Result<(), Refusal> {
        let Some(rest) = path.strip_prefix("/v1/organization/") else { return Err(Refusal::NotForMembers) };
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            // Narrowed to their projects by the handlers.
            ["projects" | "api_keys" | "overview" | "alerts" | "costs"] if reads => Ok(()),
            ["usage", _] if reads => Ok(()),
            ["requests", _] if reads => Ok(()),
            ["alerts", _, "acknowledge"] => Ok(()),
            ["projects", project, tail @ ..] => {
                if !self.sees_project(project) {
                    return Err(Refusal::NoSuchProject((*project).to_owned()));
                }
                match tail {
                    [] | ["rate_limits"] | ["service_accounts", ..] | ["users", ..] if reads => Ok(()),
                    // Importing takes any secret and says which keys exist: the owners'.
                    ["api_keys", "import"] => Err(Refusal::NotForMembers),
                    ["api_keys", ..] => Ok(()),
                    _ => Err(Refusal::NotForMembers),
                }
            }
            _ => Err(Refusal::NotForMembers),
        }
    }
}

/// A session's use is written back at most this often (each request would
/// be a write otherwise); idle expiry is this much less exact.
const TOUCH_EVERY_SECONDS: i64 = 60;

/// Opens, finds and ends dashboard sessions.
pub struct Sessions {
    /// A session unused this long ends.
    pub idle_seconds: i64,
    /// A session ends this long after sign-in.
    pub max_seconds: i64,
    /// Cookies are `Secure` (the gateway serves TLS, or is reached over https).
    pub secure: bool,
    pub sso: Option<oidc::Sso>,
}

/// What a signed-in browser presents, resolved.
pub struct Resolved {
    pub record: SessionRecord,
    pub principal: Principal,
}

impl Sessions {
    /// A new session for `holder`; the token goes into the browser's cookie.
    pub async fn open(
        &self,
        store: &dyn Store,
        holder: SessionHolder,
        now: Timestamp,
        client_ip: Option<String>,
        user_agent: Option<String>,
    ) -> StoreResult<SessionToken> {
        let token = SessionToken::generate();
        store
            .insert_session(&SessionRecord {
                token_hash: token.hash(),
                holder,
                created_at: now,
                last_seen_at: now,
                expires_at: now + self.max_seconds,
                client_ip,
                user_agent,
            })
            .await?;
        Ok(token)
    }

    /// The session behind a cookie and who acts through it now; `None` when
    /// it ended (signed out, expired, idle too long) or its holder can no
    /// longer sign in (a removed person, a revoked or suspended admin key).
    pub async fn resolve(
        &self,
        store: &dyn Store,
        index: &KeyIndex,
        token: &SessionToken,
        now: Timestamp,
    ) -> StoreResult<Option<Resolved>> {
        let Some(record) = store.get_session(&token.hash()).await? else { return Ok(None) };
        if record.expires_at <= now || record.last_seen_at + self.idle_seconds <= now {
            store.delete_session(&record.token_hash).await?;
            return Ok(None);
        }
        let principal = match &record.holder {
            SessionHolder::User(id) => match store.get_user(id).await? {
                None => None,
                Some(user) => {
                    // An unknown stored role grants the least.
                    let role = Role::parse(&user.role).unwrap_or(Role::Member);
                    let projects = match role {
                        Role::Member => Some(store.user_projects(&user.id).await?),
                        Role::Owner | Role::Reader => None,
                    };
                    Some(Principal { actor: Actor::User(user), role, projects, client_ip: None })
                }
            },
            SessionHolder::AdminKey(id) => admin_key(index, id, now).map(Principal::admin_key),
        };
        let Some(principal) = principal else {
            store.delete_session(&record.token_hash).await?;
            return Ok(None);
        };
        if record.last_seen_at + TOUCH_EVERY_SECONDS <= now {
            store.touch_session(&record.token_hash, now).await?;
        }
        Ok(Some(Resolved { record, principal }))
    }

    /// Whether this request's cookies get `Secure` (and the `__Host-` name):
    /// the gateway serves TLS, single sign-on returns over https, or a proxy
    /// in front says the browser used https.
    pub fn is_secure(&self, headers: &http::HeaderMap) -> bool {
        self.secure
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.eq_ignore_ascii_case("https"))
    }

    /// The session cookie's name for this request.
    pub fn cookie_name(&self, headers: &http::HeaderMap) -> &'static str {
        if self.is_secure(headers) {
            SECURE_COOKIE
        } else {
            COOKIE
        }
    }

    /// The session cookie the request carries, under this request's name only
    /// (over https a plain `keygate_session` could have been planted).
    pub fn cookie<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h str> {
        cookie_value(headers, self.cookie_name(headers))
    }

    /// The `Set-Cookie` value that hands `token` to the browser.
    pub fn set_cookie(&self, headers: &http::HeaderMap, token: &SessionToken) -> String {
        let name = self.cookie_name(headers);
        cookie(name, &token.0, "/", "Strict", self.is_secure(headers), self.max_seconds)
    }

    /// The `Set-Cookie` value that clears the session cookie.
    pub fn clear_cookie(&self, headers: &http::HeaderMap) -> String {
        cookie(self.cookie_name(headers), "", "/", "Strict", self.is_secure(headers), 0)
    }

    /// When a session ends if unused from now on: the sooner of its idle and absolute expiry.
    pub fn idle_expiry(&self, record: &SessionRecord, now: Timestamp) -> Timestamp {
        (now + self.idle_seconds).min(record.expires_at)
    }
}

/// The admin key a session was opened with, while it may still sign in:
/// an admin key, active, not expired.
fn admin_key(index: &KeyIndex, id: &PublicId, now: Timestamp) -> Option<Authorized> {
    let key = index.by_id(id)?;
    let usable = key.kind == crate::store::KeyKind::Admin
        && key.state == crate::store::KeyState::Active
        && key.expires_at.is_none_or(|at| at > now);
    usable.then(|| Authorized { expires_at: key.expires_at, key, project: None })
}

/// A session's secret token, as the cookie carries it. Only its hash is stored.
pub struct SessionToken(String);

impl SessionToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The token from a cookie's value; `None` when it cannot be one.
    pub fn from_cookie(value: &str) -> Option<Self> {
        (value.len() == 43 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .then(|| Self(value.to_owned()))
    }

    /// What the store keys the session by.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The session's CSRF token: derived from the session's secret, so it
    /// needs no storage, and a page can hold it without holding the cookie.
    pub fn csrf(&self) -> String {
        // A hash of the secret under its own label: the page learns nothing
        // of the cookie's token from it, and no key setup can fail.
        let digest = Sha256::new().chain_update(b"keygate dashboard csrf\0").chain_update(self.0.as_bytes()).finalize();
        URL_SAFE_NO_PAD.encode(digest)
    }

    /// Whether `presented` is this session's CSRF token (in constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf().as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The cookie's value; for tests that act as the browser.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(..)")
    }
}

/// A `Set-Cookie` value; `max_age_seconds` 0 clears it.
pub fn cookie(name: &str, value: &str, path: &str, same_site: &str, secure: bool, max_age_seconds: i64) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age_seconds}; HttpOnly; SameSite={same_site}{secure}")
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// A random URL-safe string of `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests;
