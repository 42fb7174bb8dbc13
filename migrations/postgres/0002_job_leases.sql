-- Which replica runs a cluster-wide periodic job (the usage anomaly watcher):
-- a holder keeps its lease by renewing it before it expires; another replica
-- takes over once it has. Transient: exports leave it out.
CREATE TABLE job_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL                  -- unix seconds
);
