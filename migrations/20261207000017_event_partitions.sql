-- Events are kept `history.event_retention` (default 90 days): the table is partitioned by day of
-- recording (server clock) like the samples, and the server drops partitions past retention.
-- Existing rows are moved into daily partitions created here for every day they cover.
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_cluster_at RENAME TO events_unpartitioned_cluster_at;
ALTER INDEX events_at RENAME TO events_unpartitioned_at;

CREATE TABLE events (
    id           bigint NOT NULL DEFAULT nextval('events_id_seq'),
    at           timestamptz NOT NULL,            -- when it happened (agent clock for what agents saw)
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    cluster      text NOT NULL,
    node_id      text,
    instance     text,
    kind         text NOT NULL,
    from_state   text,
    to_state     text,
    message      text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}',
    link         text,
    PRIMARY KEY (id, recorded_at)
) PARTITION BY RANGE (recorded_at);
ALTER SEQUENCE events_id_seq OWNED BY events.id;

DO $$
DECLARE
    first_day date := coalesce((SELECT min(recorded_at AT TIME ZONE 'UTC')::date FROM events_unpartitioned),
                               (now() AT TIME ZONE 'UTC')::date);
    last_day date := greatest((SELECT max(recorded_at AT TIME ZONE 'UTC')::date FROM events_unpartitioned),
                              (now() AT TIME ZONE 'UTC')::date + 2);
    day date;
BEGIN
    day := first_day;
    WHILE day <= last_day LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
            'events_p' || to_char(day, 'YYYYMMDD'),
            to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
        day := day + 1;
    END LOOP;
END $$;

INSERT INTO events (id, at, recorded_at, cluster, node_id, instance, kind, from_state, to_state, message, detail, link)
SELECT id, at, recorded_at, cluster, node_id, instance, kind, from_state, to_state, message, detail, link
  FROM events_unpartitioned;
DROP TABLE events_unpartitioned;

CREATE INDEX events_cluster_at ON events (cluster, at DESC, id DESC);
CREATE INDEX events_at ON events (at DESC, id DESC);
