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
    max_key_age_seconds INTEGER                -- rotation policy: keys older than this are due
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
