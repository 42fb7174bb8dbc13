-- The usage watcher resumes where it stopped: the end of the last window it
-- examined, kept beside its lease.
ALTER TABLE job_leases ADD COLUMN position INTEGER;

-- A model request is one the upstream answered with success (as OpenAI's
-- Usage API counts num_model_requests); failed calls are counted apart, for
-- the watcher and for keygate's own figures.
ALTER TABLE usage_rollups ADD COLUMN failed_requests INTEGER NOT NULL DEFAULT 0;

-- New-network detection counts each examined window once (counted_until) and
-- alerts once per network (alerted_at).
ALTER TABLE key_networks ADD COLUMN counted_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE key_networks ADD COLUMN alerted_at INTEGER;
UPDATE key_networks SET counted_until = last_seen;

-- Webhook delivery of each alert raised while a webhook was configured:
-- delivery_status is NULL (no webhook), 'pending', 'delivered' or 'failed'.
ALTER TABLE alerts ADD COLUMN delivery_id TEXT;
ALTER TABLE alerts ADD COLUMN delivery_status TEXT;
ALTER TABLE alerts ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN delivery_next_at INTEGER;
ALTER TABLE alerts ADD COLUMN delivery_last_at INTEGER;
ALTER TABLE alerts ADD COLUMN delivery_last_error TEXT;
CREATE INDEX alerts_delivery ON alerts (delivery_status, delivery_next_at);
