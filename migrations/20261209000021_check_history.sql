-- Service check history (issue 21), kept like replication lag: one row per accepted heartbeat
-- and check, partitioned by day of arrival like replication_samples, and per-minute rollups
-- partitioned by minute like replication_rollups_1m; the server creates the partitions and drops
-- them with the same retentions. A check's tie (VRRP instance, link) is configuration, not a
-- measurement: it is in nodes.checks and in the check_failing / check_passing events.
CREATE TABLE check_samples (
    received_at  timestamptz NOT NULL,
    node_id      text NOT NULL,
    check_name   text NOT NULL,
    passing      boolean NOT NULL,        -- after the check's rise/fall counts
    duration_ms  double precision         -- the latest attempt's, as the heartbeat carried it
) PARTITION BY RANGE (received_at);
CREATE INDEX check_samples_node_check_time ON check_samples (node_id, check_name, received_at);

CREATE TABLE check_rollups_1m (
    minute           timestamptz NOT NULL,
    node_id          text NOT NULL,
    check_name       text NOT NULL,
    samples          integer NOT NULL,
    passing          integer NOT NULL,    -- samples that were passing
    duration_ms_min  double precision,
    duration_ms_max  double precision,
    duration_ms_sum  double precision,
    duration_ms_n    integer NOT NULL,
    PRIMARY KEY (node_id, check_name, minute)
) PARTITION BY RANGE (minute);
