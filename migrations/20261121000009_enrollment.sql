-- Agents enroll: an admin creates a one-time enrollment token for a node id; the agent trades
-- it for a node credential, bound to that node id. Both are stored as SHA-256 hashes.
CREATE TABLE enrollment_tokens (
    id           uuid PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE,
    node_id      text NOT NULL,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);

CREATE TABLE node_credentials (
    node_id      text PRIMARY KEY,
    secret_hash  bytea NOT NULL UNIQUE,
    enrolled_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
