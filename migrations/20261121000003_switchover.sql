-- Switchovers, the epoch-fenced command channel to agents, and the audit log.

-- Raised by every switchover in the transaction that accepts it; commands carry it (fencing token).
ALTER TABLE clusters ADD COLUMN epoch bigint NOT NULL DEFAULT 0;

CREATE TABLE switchovers (
    id              uuid PRIMARY KEY,
    cluster         text NOT NULL REFERENCES clusters (name),
    instance        text NOT NULL,
    target_node     text NOT NULL,
    old_master      text NOT NULL,
    link            text,                 -- replication link moved with the VIP ('postgresql:pg')
    reason          text NOT NULL,
    requested_by    text NOT NULL,
    requested_from  text,
    state           text NOT NULL CHECK (state IN ('scheduled', 'running', 'succeeded', 'failed', 'cancelled')),
    epoch           bigint NOT NULL,
    max_lag_bytes   bigint,
    scheduled_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    steps           jsonb NOT NULL,       -- [{name, description, state, started_at, finished_at, message}]
    error           text
);
-- At most one switchover per cluster waits or runs: a second request fails this index (409).
CREATE UNIQUE INDEX switchovers_one_active ON switchovers (cluster) WHERE state IN ('scheduled', 'running');
CREATE INDEX switchovers_cluster_created ON switchovers (cluster, created_at DESC);

CREATE TABLE commands (
    id             uuid PRIMARY KEY,
    cluster        text NOT NULL,
    node_id        text NOT NULL,
    epoch          bigint NOT NULL,
    action         jsonb NOT NULL,
    deadline       timestamptz NOT NULL,
    switchover_id  uuid REFERENCES switchovers (id),
    state          text NOT NULL CHECK (state IN ('pending', 'delivered', 'succeeded', 'failed', 'refused', 'expired')),
    result         text,
    requested_by   text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    delivered_at   timestamptz,
    finished_at    timestamptz
);
CREATE INDEX commands_open ON commands (node_id, created_at) WHERE state IN ('pending', 'delivered');

-- Append-only: who did what, from where, why, and how it ended.
CREATE TABLE audit_log (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    source    text,
    action    text NOT NULL,
    target    text,
    reason    text,
    outcome   text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
