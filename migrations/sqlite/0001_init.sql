-- keygate schema v1. PostgreSQL gets the same tables under migrations/postgres.
-- Times are unix seconds (INTEGER); digests are 32-byte SHA-256 (BLOB);
-- lists are JSON arrays in TEXT columns (NULL = no restriction).

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    archived_at INTEGER,
    models      TEXT,                          -- model glob allow-list
    allowed_ips TEXT,                          -- CIDR allow-list
    max_key_age_seconds INTEGER,               -- rotation policy: keys older than this are due
    budget_nanos INTEGER,                      -- monthly spend limit, nano-dollars
    budget_alert_percent INTEGER
);

-- A project's rate limits per model pattern ('*' = all models together).
CREATE TABLE project_rate_limits (
    project_id TEXT NOT NULL REFERENCES projects (id),
    model      TEXT NOT NULL,
    limits     TEXT NOT NULL,                  -- JSON: max_requests_per_1_minute, ...
    PRIMARY KEY (project_id, model)
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,                  -- 'owner' | 'reader'
    added_at   INTEGER NOT NULL,
    deleted_at INTEGER
);

CREATE TABLE service_accounts (
    id          TEXT PRIMARY KEY,
    project_id  TEXT REFERENCES projects (id), -- NULL: the organization's own (owns admin keys)
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER
);
CREATE INDEX service_accounts_project ON service_accounts (project_id);

-- One row per key identity; its secrets (rotation versions) live in api_key_secrets.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,          -- public id (12 base62), API id is "key_" || id
    kind            TEXT NOT NULL,             -- 'project' | 'admin'
    name            TEXT NOT NULL,
    project_id      TEXT REFERENCES projects (id),
    owner_type      TEXT NOT NULL,             -- 'service_account' | 'user'
    owner_id        TEXT,
    prefix          TEXT NOT NULL,
    state           TEXT NOT NULL,             -- 'active' | 'suspended' | 'revoked'
    permissions     TEXT NOT NULL DEFAULT 'all', -- 'all' | 'read_only' | 'restricted'
    scopes          TEXT,                      -- JSON array of OpenAI scope strings, for 'restricted'
    models          TEXT,                      -- model glob allow-list
    allowed_ips     TEXT,                      -- CIDR allow-list
    rate_limits     TEXT,                      -- JSON: max_requests_per_1_minute, ...
    budget_nanos    INTEGER,                   -- monthly spend limit, nano-dollars
    budget_alert_percent INTEGER,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    last_used_at    INTEGER,
    last_used_ip    TEXT,
    last_used_user_agent TEXT,
    revoked_at      INTEGER,
    revoked_by      TEXT,
    revoke_reason   TEXT
);
CREATE INDEX api_keys_project ON api_keys (project_id);
CREATE INDEX api_keys_kind ON api_keys (kind);
CREATE INDEX api_keys_owner ON api_keys (owner_id);

CREATE TABLE api_key_secrets (
    digest      BLOB PRIMARY KEY,              -- SHA-256 of the whole key string
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    algorithm   TEXT NOT NULL,                 -- 'v1' (checksummed keygate key) | 'legacy' (imported or bootstrap value)
    last4       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER                        -- set when a rotation starts the grace period
);
CREATE INDEX api_key_secrets_key ON api_key_secrets (key_id, created_at);

-- Append-only record of admin actions, in OpenAI's audit-log shape.
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    effective_at INTEGER NOT NULL,
    project_id   TEXT,
    actor_key_id TEXT,
    details      TEXT NOT NULL                 -- JSON object for the event's own property
);
CREATE INDEX audit_log_time ON audit_log (effective_at, seq);

-- Why a request was refused, by request id, for `keygate explain`. Pruned by
-- age and by count so a flood of bad requests cannot grow it without bound.
CREATE TABLE denials (
    request_id  TEXT PRIMARY KEY,
    at          INTEGER NOT NULL,
    reason      TEXT NOT NULL,                 -- Denial::kind()
    explanation TEXT NOT NULL,                 -- the private reason in plain words
    key_id      TEXT,
    project_id  TEXT,
    status      INTEGER NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    client_ip   TEXT
);
CREATE INDEX denials_at ON denials (at);

-- One row per metered data-plane request.
CREATE TABLE usage_records (
    request_id       TEXT PRIMARY KEY,
    at               INTEGER NOT NULL,
    key_id           TEXT NOT NULL,
    prefix           TEXT NOT NULL,
    project_id       TEXT NOT NULL,
    owner_id         TEXT,
    model            TEXT,
    route            TEXT NOT NULL,
    kind             TEXT NOT NULL,             -- 'completions' | 'embeddings' | 'other'
    status           INTEGER NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    cached_tokens    INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    estimated        INTEGER NOT NULL,          -- 1: tokens estimated (stream cut short, no upstream usage)
    cost_nanos       INTEGER NOT NULL,          -- nano-dollars
    latency_ms       INTEGER NOT NULL,
    upstream         TEXT NOT NULL,
    client_ip        TEXT
);
CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key ON usage_records (key_id, at);

-- Per-minute sums of usage_records, so Usage API queries stay fast.
CREATE TABLE usage_rollups (
    minute           INTEGER NOT NULL,          -- unix seconds, a multiple of 60
    project_id       TEXT NOT NULL,
    key_id           TEXT NOT NULL,
    prefix           TEXT NOT NULL,
    model            TEXT NOT NULL,             -- '' when the request named none
    kind             TEXT NOT NULL,
    requests         INTEGER NOT NULL,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    cached_tokens    INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_nanos       INTEGER NOT NULL,
    PRIMARY KEY (minute, project_id, key_id, model, kind)
);

-- Anomaly alerts raised by the usage watcher.
CREATE TABLE alerts (
    id         TEXT PRIMARY KEY,
    at         INTEGER NOT NULL,
    key_id     TEXT NOT NULL,
    project_id TEXT,
    kind       TEXT NOT NULL,                   -- 'spike' | 'new_ip_range' | 'dormant_key'
    severity   TEXT NOT NULL,                   -- 'warning' | 'critical'
    message    TEXT NOT NULL,
    details    TEXT NOT NULL                    -- JSON
);
CREATE INDEX alerts_at ON alerts (at);
CREATE INDEX alerts_key ON alerts (key_id, kind, at);

-- Client address ranges each key has been used from (for new-range alerts).
CREATE TABLE key_networks (
    key_id     TEXT NOT NULL,
    network    TEXT NOT NULL,                   -- /24 (IPv4) or /48 (IPv6)
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    requests   INTEGER NOT NULL,
    PRIMARY KEY (key_id, network)
);
