-- hapulse schema, first version. Migrations are append-only: never edit an applied one.

-- Latest known state ------------------------------------------------------------------------

CREATE TABLE clusters (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per agent host. boot_id/last_seq are the de-duplication watermark of its reports.
CREATE TABLE nodes (
    node_id               text PRIMARY KEY,
    cluster               text NOT NULL REFERENCES clusters (name),
    hostname              text NOT NULL,
    agent_version         text NOT NULL,
    protocol_version      integer NOT NULL,
    boot_id               uuid NOT NULL,
    last_seq              bigint NOT NULL,
    heartbeat_interval_ms integer NOT NULL,
    last_heartbeat_at     timestamptz NOT NULL,   -- server clock, when the last report arrived
    last_observed_at      timestamptz NOT NULL,   -- agent clock, when it took that snapshot
    status                text NOT NULL CHECK (status IN ('up', 'suspect', 'down')),
    status_since          timestamptz NOT NULL,
    uptime_seconds        bigint NOT NULL,
    load1                 double precision NOT NULL,
    keepalived_running    boolean NOT NULL,
    spool_depth           bigint NOT NULL DEFAULT 0,
    spool_dropped         bigint NOT NULL DEFAULT 0,
    first_seen_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nodes_cluster ON nodes (cluster);

-- One row per (node, keepalived vrrp_instance), as of the node's last state change.
CREATE TABLE vrrp_instances (
    node_id             text NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    name                text NOT NULL,
    vrid                smallint,
    interface           text,
    state               text NOT NULL CHECK (state IN ('INIT', 'BACKUP', 'MASTER', 'FAULT', 'STOP')),
    base_priority       smallint,
    effective_priority  smallint,
    vips                text[] NOT NULL,
    held_vips           text[] NOT NULL,
    last_transition     timestamptz,
    counters            jsonb NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, name)
);

-- History -----------------------------------------------------------------------------------

-- Every transition, written synchronously before the report that caused it is acknowledged.
CREATE TABLE events (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,            -- when it happened (agent clock for what agents saw)
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    cluster      text NOT NULL,
    node_id      text,
    instance     text,
    kind         text NOT NULL,
    from_state   text,
    to_state     text,
    message      text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX events_cluster_at ON events (cluster, at DESC, id DESC);
CREATE INDEX events_at ON events (at DESC, id DESC);

-- One row per accepted heartbeat, partitioned by day of arrival (server clock); the server
-- creates partitions ahead and drops those past retention.
CREATE TABLE heartbeat_samples (
    received_at     timestamptz NOT NULL,
    observed_at     timestamptz NOT NULL,
    node_id         text NOT NULL,
    boot_id         uuid NOT NULL,
    seq             bigint NOT NULL,
    load1           double precision NOT NULL,
    uptime_seconds  bigint NOT NULL,
    instances       jsonb NOT NULL              -- [{name, state, effective_priority, holds_vip}]
) PARTITION BY RANGE (received_at);
CREATE INDEX heartbeat_samples_node_time ON heartbeat_samples (node_id, received_at);
