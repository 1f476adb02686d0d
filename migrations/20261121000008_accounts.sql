-- People, their sessions and API tokens. Secrets are stored hashed: passwords with argon2id (PHC
-- strings), session ids and API tokens (32 random bytes each) with SHA-256.
CREATE TABLE users (
    name           text PRIMARY KEY,
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    clusters       text[],                    -- NULL: every cluster
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);

CREATE TABLE sessions (
    id_hash       bytea PRIMARY KEY,
    user_name     text NOT NULL REFERENCES users (name),
    csrf_token    text NOT NULL,
    source        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    reauth_at     timestamptz NOT NULL DEFAULT now(),   -- the password was last given
    ended_at      timestamptz
);
CREATE INDEX sessions_user ON sessions (user_name) WHERE ended_at IS NULL;

CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    clusters      text[],                     -- NULL: every cluster
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Who did it with which role; and the audit log is append-only, also for someone with SQL.
ALTER TABLE audit_log ADD COLUMN role text;
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
