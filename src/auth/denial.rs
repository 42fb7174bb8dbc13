//! Every refusal of a credential, with its full private reason. The public
//! rendering (in `dialect`) never tells unknown, revoked and mistyped keys apart;
//! `Display` here says everything, without any secret, for logs and `explain`.

use std::fmt;

use crate::ids::PublicId;
use crate::key::KeyFormatError;
use crate::policy::{BudgetScope, Dimension, Exceeded, Scope};
use crate::store::Revocation;
use crate::time::{go_duration, rfc3339, Timestamp};

/// Names a key without any secret: public id, name, prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub id: PublicId,
    pub name: String,
    pub prefix: String,
    pub project_id: Option<String>,
}

impl KeyRef {
    pub fn of(key: &super::IndexedKey) -> Self {
        Self {
            id: key.id,
            name: key.name.as_ref().to_owned(),
            prefix: key.prefix().to_owned(),
            project_id: key.project_id().map(str::to_owned),
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}` ({}, prefix {})", self.name, self.id, self.prefix)
    }
}

/// Another provider's key, recognised by its shape alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignKey {
    OpenAi,
    Azure,
}

impl ForeignKey {
    /// Classifies a presented string that is not a keygate key.
    pub fn classify(presented: &str) -> Option<Self> {
        let openai_prefix =
            ["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-"].iter().any(|p| presented.starts_with(p));
        if presented.contains("T3BlbkFJ") || (openai_prefix && !presented.contains("-kg1")) {
            Some(Self::OpenAi)
        } else if presented.len() == 32 && presented.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(Self::Azure)
        } else {
            None
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::OpenAi => "an OpenAI API key",
            Self::Azure => "an Azure OpenAI key (32 hex characters)",
        }
    }
}

/// `mask` is the presented value masked as OpenAI masks it; it appears in the
/// public 401 text and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    MissingCredential,
    MalformedAuthorization {
        detail: &'static str,
    },
    /// `near`: the existing key the presented value names, if any.
    MalformedKey {
        mask: String,
        reason: KeyFormatError,
        near: Option<KeyRef>,
    },
    /// `foreign`: what the presented string looks like when it is another
    /// provider's key; `legacy`: it has no keygate checksum (as keys imported
    /// from elsewhere have none), so a mistype cannot be told from an unknown key.
    UnknownKey {
        mask: String,
        foreign: Option<ForeignKey>,
        legacy: bool,
    },
    WrongSecret {
        mask: String,
        key: KeyRef,
    },
    Revoked {
        mask: String,
        key: KeyRef,
        revocation: Option<Revocation>,
    },
    Suspended {
        mask: String,
        key: KeyRef,
    },
    Expired {
        mask: String,
        key: KeyRef,
        at: Timestamp,
    },
    /// `at`: end of the grace period; `rotated_at`: when the newest secret was made.
    RotatedOut {
        mask: String,
        key: KeyRef,
        at: Timestamp,
        rotated_at: Option<Timestamp>,
    },
    AdminKeyOnDataPlane {
        key: KeyRef,
        scope: Scope,
    },
    ProjectKeyOnAdmin {
        key: KeyRef,
        scope: Scope,
    },
    ProjectArchived {
        mask: String,
        key: KeyRef,
        project: String,
        at: Timestamp,
    },
    OrganizationMismatch {
        key: KeyRef,
        header: String,
    },
    ProjectMismatch {
        key: KeyRef,
        header: String,
    },
    IpNotAllowed {
        key: KeyRef,
        ip: Option<std::net::IpAddr>,
    },
    MissingScope {
        key: KeyRef,
        scope: Scope,
    },
    ModelNotAllowed {
        key: KeyRef,
        model: String,
    },
    /// An Azure deployment name that is not configured; `serving` lists the
    /// deployments of the model when the name was a model name.
    UnknownDeployment {
        key: KeyRef,
        deployment: String,
        serving: Vec<String>,
    },
    /// A rate, concurrency or budget limit (`organization` names it in the 429).
    Limited {
        key: KeyRef,
        model: Option<String>,
        organization: String,
        exceeded: Exceeded,
    },
    /// A client over the failed-authentication throttle; `failure` is what it
    /// would otherwise have been told.
    Throttled {
        client: Option<std::net::IpAddr>,
        exceeded: Exceeded,
        failure: Box<Denial>,
    },
}

impl Denial {
    pub(super) fn with_mask(self, new: String) -> Self {
        match self {
            Self::Revoked { key, revocation, .. } => Self::Revoked { mask: new, key, revocation },
            Self::Suspended { key, .. } => Self::Suspended { mask: new, key },
            Self::Expired { key, at, .. } => Self::Expired { mask: new, key, at },
            Self::RotatedOut { key, at, rotated_at, .. } => Self::RotatedOut { mask: new, key, at, rotated_at },
            Self::ProjectArchived { key, project, at, .. } => Self::ProjectArchived { mask: new, key, project, at },
            other => other,
        }
    }

    /// Whether the credential itself failed (what the failed-authentication
    /// throttle counts), as opposed to a valid key refused for its settings.
    pub fn is_failed_authentication(&self) -> bool {
        matches!(
            self,
            Self::MissingCredential
                | Self::MalformedAuthorization { .. }
                | Self::MalformedKey { .. }
                | Self::UnknownKey { .. }
                | Self::WrongSecret { .. }
                | Self::Revoked { .. }
                | Self::Suspended { .. }
                | Self::Expired { .. }
                | Self::RotatedOut { .. }
                | Self::ProjectArchived { .. }
        )
    }

    /// A stable label for metrics (`auth_failures_total{reason}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingCredential => "missing_credential",
            Self::MalformedAuthorization { .. } => "malformed_authorization",
            Self::MalformedKey { .. } => "malformed_key",
            Self::UnknownKey { .. } => "unknown_key",
            Self::WrongSecret { .. } => "wrong_secret",
            Self::Revoked { .. } => "revoked",
            Self::Suspended { .. } => "suspended",
            Self::Expired { .. } => "expired",
            Self::RotatedOut { .. } => "rotated_out",
            Self::AdminKeyOnDataPlane { .. } => "admin_key_on_data_plane",
            Self::ProjectKeyOnAdmin { .. } => "project_key_on_admin",
            Self::ProjectArchived { .. } => "project_archived",
            Self::OrganizationMismatch { .. } => "organization_mismatch",
            Self::ProjectMismatch { .. } => "project_mismatch",
            Self::IpNotAllowed { .. } => "ip_not_allowed",
            Self::MissingScope { .. } => "missing_scope",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::Limited { exceeded: Exceeded::Budget { .. }, .. } => "budget_exceeded",
            Self::Limited { exceeded: Exceeded::Unavailable, .. } => "limiter_unavailable",
            Self::Limited { .. } => "rate_limited",
            Self::Throttled { .. } => "failed_auth_throttled",
            Self::UnknownDeployment { .. } => "unknown_deployment",
        }
    }

    /// The key this denial is about, when one was identified.
    pub fn key(&self) -> Option<&KeyRef> {
        match self {
            Self::MissingCredential | Self::MalformedAuthorization { .. } | Self::UnknownKey { .. } => None,
            Self::MalformedKey { near, .. } => near.as_ref(),
            Self::WrongSecret { key, .. }
            | Self::Revoked { key, .. }
            | Self::Suspended { key, .. }
            | Self::Expired { key, .. }
            | Self::RotatedOut { key, .. }
            | Self::AdminKeyOnDataPlane { key, .. }
            | Self::ProjectKeyOnAdmin { key, .. }
            | Self::ProjectArchived { key, .. }
            | Self::OrganizationMismatch { key, .. }
            | Self::ProjectMismatch { key, .. }
            | Self::IpNotAllowed { key, .. }
            | Self::MissingScope { key, .. }
            | Self::ModelNotAllowed { key, .. }
            | Self::Limited { key, .. }
            | Self::UnknownDeployment { key, .. } => Some(key),
            Self::Throttled { failure, .. } => failure.key(),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingCredential => {
                f.write_str("no Authorization header arrived (the client sent none, or a proxy stripped it)")
            }
            Self::MalformedAuthorization { detail } => write!(f, "malformed Authorization header: {detail}"),
            Self::MalformedKey { reason, near, .. } => {
                write!(f, "the presented key is malformed: {reason}")?;
                match near {
                    Some(key) => write!(f, "; it names {key}, so it is probably a mistyped or truncated copy of that key"),
                    None => Ok(()),
                }
            }
            Self::UnknownKey { foreign: Some(kind), .. } => write!(
                f,
                "the client sent {}, not a key issued by this gateway (it still uses its provider key; give it a keygate key)",
                kind.describe()
            ),
            Self::UnknownKey { foreign: None, legacy: true, .. } => f.write_str(
                "unknown key (legacy key: no checksum): no key with this value exists on this gateway, and without keygate's checksum a mistyped copy of a legacy key (imported from elsewhere) cannot be told from an unknown key; compare it with the one the key's owner holds, and rotate legacy keys into checksummed ones (`keygate keys rotate`)",
            ),
            Self::UnknownKey { foreign: None, legacy: false, .. } => f.write_str(
                "no key with this value exists on this gateway (from another gateway or environment, deleted, or not a keygate key)",
            ),
            Self::WrongSecret { key, .. } => write!(
                f,
                "the key names {key} but its secret does not match any of that key's secrets (an old secret from before a rotation, or a forged key)"
            ),
            Self::Revoked { key, revocation, .. } => {
                write!(f, "{key} was revoked")?;
                if let Some(r) = revocation {
                    write!(f, " at {}", rfc3339(r.at))?;
                    if let Some(by) = &r.by {
                        write!(f, " by {by}")?;
                    }
                    if let Some(reason) = &r.reason {
                        write!(f, "; reason: {reason}")?;
                    }
                }
                Ok(())
            }
            Self::Suspended { key, .. } => write!(f, "{key} is suspended"),
            Self::Expired { key, at, .. } => write!(f, "{key} expired at {}", rfc3339(*at)),
            Self::RotatedOut { key, at, rotated_at, .. } => {
                write!(f, "{key} was rotated")?;
                if let Some(rotated_at) = rotated_at {
                    write!(f, " at {}", rfc3339(*rotated_at))?;
                }
                write!(
                    f,
                    "; the grace period of the presented (old) secret ended at {}; its replacement is the newest secret of {} (same id)",
                    rfc3339(*at),
                    key.id
                )
            }
            Self::AdminKeyOnDataPlane { key, scope } => write!(
                f,
                "{key} is an admin key, which can only call the Administration API (this route needs scope {})",
                scope.as_str()
            ),
            Self::ProjectKeyOnAdmin { key, scope } => write!(
                f,
                "{key} is a project key; the Administration API needs an admin key (missing scope {})",
                scope.as_str()
            ),
            Self::ProjectArchived { key, project, at, .. } => {
                write!(f, "{key} belongs to project {project}, which was archived at {}", rfc3339(*at))
            }
            Self::OrganizationMismatch { key, header } => write!(
                f,
                "the OpenAI-Organization header `{header}` does not match this gateway's organization (sent with {key})"
            ),
            Self::ProjectMismatch { key, header } => write!(
                f,
                "the OpenAI-Project header {header} does not match the key's project {} ({key})",
                key.project_id.as_deref().unwrap_or("none")
            ),
            Self::IpNotAllowed { key, ip } => match ip {
                Some(ip) => write!(f, "client address {ip} is outside the IP allow-list of {key} or its project"),
                None => write!(f, "the client address is unknown, and {key} or its project has an IP allow-list"),
            },
            Self::MissingScope { key, scope } => {
                write!(f, "{key} lacks scope {} needed by this route (its permissions do not include it)", scope.as_str())
            }
            Self::ModelNotAllowed { key, model } => {
                write!(f, "model `{model}` is outside the model allow-list of {key} or its project")
            }
            Self::UnknownDeployment { key, deployment, serving } => {
                write!(f, "Azure deployment `{deployment}` does not exist on this gateway (request by {key})")?;
                if !serving.is_empty() {
                    write!(f, "; `{deployment}` is a model name: Azure clients must name a deployment, and the deployments of this model are: {}", serving.join(", "))?;
                }
                Ok(())
            }
            Self::Limited { key, exceeded, .. } => match exceeded {
                Exceeded::Rate { dimension, limit, used, requested, retry_after_ms, owner } => write!(
                    f,
                    "{key} hit the {} limit of {owner}: limit {limit}, used {used}, requested {requested}; it frees up in {}",
                    dimension_name(*dimension),
                    go_duration(retry_after_ms * 1000)
                ),
                Exceeded::TooLarge { dimension, limit, requested, owner } => write!(
                    f,
                    "{key} sent a request needing {requested} against the {} limit of {owner}, which is only {limit}: it can never fit",
                    dimension_name(*dimension)
                ),
                Exceeded::Concurrency { limit, owner } => {
                    write!(f, "{key} hit the concurrent-request limit of {owner}: {limit} requests already in flight")
                }
                Exceeded::Budget { scope, budget_nanos, spent_nanos } => write!(
                    f,
                    "the monthly budget of {} (${:.2}) is spent: ${:.4} this month (request by {key})",
                    match scope {
                        BudgetScope::Key(id) => format!("key {id}"),
                        BudgetScope::Project(id) => format!("project {id}"),
                    },
                    *budget_nanos as f64 / 1e9,
                    *spent_nanos as f64 / 1e9
                ),
                Exceeded::Unavailable => write!(
                    f,
                    "the shared rate limiter (Redis) was unreachable and `[redis] on_failure = \"closed\"` refuses requests it cannot meter (request by {key})"
                ),
            },
            Self::Throttled { client, exceeded, failure } => {
                let limit = match exceeded {
                    Exceeded::Rate { limit, .. } => *limit,
                    _ => 0,
                };
                match client {
                    Some(ip) => write!(f, "client {ip} made more than {limit} failed authentications a minute and is cooling down")?,
                    None => write!(f, "the client made more than {limit} failed authentications a minute and is cooling down")?,
                }
                write!(f, "; this attempt failed because {failure}")
            }
        }
    }
}

/// How a rate dimension is named in explanations and in OpenAI's 429 text.
pub fn dimension_name(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::RequestsPerMinute => "requests per min (RPM)",
        Dimension::RequestsPerDay => "requests per day (RPD)",
        Dimension::TokensPerMinute => "tokens per min (TPM)",
        Dimension::TokensPerDay => "tokens per day (TPD)",
        Dimension::FailedAuthPerMinute => "failed authentications per min",
    }
}
