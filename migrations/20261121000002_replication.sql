-- Replication links (PostgreSQL, MySQL/MariaDB, DRBD) beside VRRP instances, their history, and
-- per-minute rollups of all history for long charts.

-- One row per (node, link), as of the node's last state change. link = 'kind:name'.
CREATE TABLE replication_links (
    node_id        text NOT NULL REFERENCES nodes (node_id) ON DELETE CASCADE,
    link           text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('postgresql', 'mysql', 'drbd')),
    name           text NOT NULL,
    role           text NOT NULL CHECK (role IN ('primary', 'secondary', 'unknown')),
    peer           text,
    state          text NOT NULL,
    lag_bytes      bigint,
    lag_seconds    double precision,
    vrrp_instance  text,
    error          text,
    raw            jsonb NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, link)
);

-- Events about a replication link name it here ('postgresql:pg').
ALTER TABLE events ADD COLUMN link text;

-- One row per accepted heartbeat and link, partitioned by day of arrival like heartbeat_samples.
CREATE TABLE replication_samples (
    received_at  timestamptz NOT NULL,
    node_id      text NOT NULL,
    link         text NOT NULL,
    role         text NOT NULL,
    state        text NOT NULL,
    lag_bytes    bigint,
    lag_seconds  double precision
) PARTITION BY RANGE (received_at);
CREATE INDEX replication_samples_node_link_time ON replication_samples (node_id, link, received_at);

-- Per-minute rollups, kept longer than raw samples; same daily partitioning by minute.
CREATE TABLE heartbeat_rollups_1m (
    minute      timestamptz NOT NULL,
    node_id     text NOT NULL,
    heartbeats  integer NOT NULL,
    load1_avg   double precision NOT NULL,
    load1_max   double precision NOT NULL,
    PRIMARY KEY (node_id, minute)
) PARTITION BY RANGE (minute);

CREATE TABLE replication_rollups_1m (
    minute           timestamptz NOT NULL,
    node_id          text NOT NULL,
    link             text NOT NULL,
    samples          integer NOT NULL,
    lag_bytes_min    bigint,
    lag_bytes_max    bigint,
    lag_bytes_sum    numeric,
    lag_bytes_n      integer NOT NULL,
    lag_seconds_min  double precision,
    lag_seconds_max  double precision,
    lag_seconds_sum  double precision,
    lag_seconds_n    integer NOT NULL,
    PRIMARY KEY (node_id, link, minute)
) PARTITION BY RANGE (minute);

-- Where the rollup job has got to: every minute before `rolled_until` is rolled up.
CREATE TABLE rollup_progress (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_until  timestamptz NOT NULL
);
