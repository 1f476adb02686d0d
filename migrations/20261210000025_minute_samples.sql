-- Issue 22: raw samples as one row per node (and per link, per check) per minute, instead of a
-- row per heartbeat. A heartbeat that changes nothing is kept in the server's memory and its
-- minute is written when the minute ends (and at shutdown), so 10,000 nodes at 1 Hz cost a few
-- hundred rows a second rather than 20,000, and a sample costs its values (4 bytes of arrival
-- offset plus the values) rather than a row header, a node id and an index entry.
--
-- `minute` is the minute the samples arrived in (server clock); `offsets_us[i]` is sample i's
-- arrival, in microseconds after `minute` (so `received_at` is exact, as before); the value
-- arrays are parallel to it. A node may have more than one row for a minute (a restart or a
-- late sample after its minute was written; a second server replica): readers take them all.
-- Values the history API never read are not kept per sample (observed_at, seq, uptime, the
-- instances' states, a link's role and state): the node's row and the events hold changes.
--
-- The per-heartbeat tables (heartbeat_samples, replication_samples, check_samples) stay: an
-- older server replica still writes them during a rolling upgrade, the history API and the
-- rollup job read both, and their partitions go with retention like before.
CREATE TABLE heartbeat_minutes (
    minute      timestamptz NOT NULL,
    node_id     text NOT NULL,
    boot_id     uuid NOT NULL,               -- the agent run of the row's newest sample
    last_seq    bigint NOT NULL,             -- the row's newest sample's sequence number
    offsets_us  integer[] NOT NULL,
    load1       double precision[] NOT NULL
) PARTITION BY RANGE (minute);
CREATE INDEX heartbeat_minutes_node_minute ON heartbeat_minutes (node_id, minute);
-- The rollup job reads the last minutes of every node: rows arrive in minute order, so a BRIN
-- index (a few pages a day) narrows that scan to the recent part of the day's partition.
CREATE INDEX heartbeat_minutes_minute ON heartbeat_minutes USING brin (minute);

CREATE TABLE replication_minutes (
    minute       timestamptz NOT NULL,
    node_id      text NOT NULL,
    link         text NOT NULL,              -- 'kind:name'
    offsets_us   integer[] NOT NULL,
    lag_bytes    bigint[] NOT NULL,          -- elements NULL where the agent had no figure
    lag_seconds  double precision[] NOT NULL
) PARTITION BY RANGE (minute);
CREATE INDEX replication_minutes_node_link_minute ON replication_minutes (node_id, link, minute);
CREATE INDEX replication_minutes_minute ON replication_minutes USING brin (minute);

CREATE TABLE check_minutes (
    minute       timestamptz NOT NULL,
    node_id      text NOT NULL,
    check_name   text NOT NULL,
    offsets_us   integer[] NOT NULL,
    passing      boolean[] NOT NULL,         -- after the check's rise/fall counts
    duration_ms  double precision[] NOT NULL -- the latest attempt's, as the heartbeat carried it
) PARTITION BY RANGE (minute);
CREATE INDEX check_minutes_node_check_minute ON check_minutes (node_id, check_name, minute);
CREATE INDEX check_minutes_minute ON check_minutes USING brin (minute);
