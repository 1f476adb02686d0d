-- Silences (and maintenance windows), acknowledgements.

CREATE TABLE silences (
    id           uuid PRIMARY KEY,
    cluster      text,                  -- matchers: NULL matches anything; at least one is set
    node_id      text,
    rules        text[] NOT NULL DEFAULT '{}',   -- empty: any rule
    severity     text,
    maintenance  boolean NOT NULL DEFAULT false,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    author       text NOT NULL,
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    switchover_id uuid REFERENCES switchovers (id),
    CHECK (ends_at > starts_at),
    CHECK (cluster IS NOT NULL OR node_id IS NOT NULL OR rules <> '{}' OR severity IS NOT NULL)
);
CREATE INDEX silences_active ON silences (ends_at);

ALTER TABLE alerts ADD COLUMN acked_at timestamptz;
ALTER TABLE alerts ADD COLUMN acked_by text;
ALTER TABLE alerts ADD COLUMN ack_comment text;
ALTER TABLE alerts ADD COLUMN silenced boolean NOT NULL DEFAULT false;
