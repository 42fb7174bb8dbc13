-- Dashboard sessions. The cookie carries a random token; only its SHA-256 is
-- stored. A session belongs to a person (signed in through single sign-on)
-- or to an admin key (signed in with it); its role is worked out on every
-- request from that person or key, so a change of role takes effect at once.
CREATE TABLE dashboard_sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT,
    admin_key_id TEXT,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,             -- the absolute expiry
    client_ip    TEXT,
    user_agent   TEXT
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

-- Single sign-on in progress: the browser holds a random login id in a
-- cookie, and the callback must bring the same state back (PKCE's verifier
-- and the nonce stay here, never in the browser).
CREATE TABLE sso_logins (
    login_hash TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    verifier   TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    next_path  TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- OpenAI's project users: who may see and manage a project's keys.
CREATE TABLE project_users (
    project_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,                  -- 'owner' | 'member'
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_users_user ON project_users (user_id);

-- An action taken in the dashboard by a person is theirs in the audit log.
ALTER TABLE audit_log ADD COLUMN actor_user_id TEXT;
ALTER TABLE audit_log ADD COLUMN actor_ip TEXT;

ALTER TABLE alerts ADD COLUMN acknowledged_at INTEGER;
ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
