-- Automatic failover: failover runs beside switchovers, the arbiter's decisions, the cluster's
-- leader (the node holding the current epoch) and the global switch.

ALTER TABLE switchovers
    ADD COLUMN kind text NOT NULL DEFAULT 'switchover' CHECK (kind IN ('switchover', 'failover')),
    ADD COLUMN automatic boolean NOT NULL DEFAULT false,
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text;
CREATE INDEX switchovers_automatic ON switchovers (cluster, created_at DESC) WHERE automatic;

-- The master of the current epoch: the node the last switchover or failover made master, or the
-- only MASTER (and primary) the arbiter saw. A split brain is resolved in its favour.
ALTER TABLE clusters ADD COLUMN leader text;

-- Every change of the arbiter's verdict on a cluster, with the evidence it weighed.
CREATE TABLE failover_decisions (
    id         bigserial PRIMARY KEY,
    cluster    text NOT NULL REFERENCES clusters (name),
    at         timestamptz NOT NULL DEFAULT now(),
    action     text NOT NULL,   -- nothing, wait, alert, propose, failover, step_down, fence
    candidate  text,
    reason     text NOT NULL,
    evidence   jsonb NOT NULL
);
CREATE INDEX failover_decisions_cluster_at ON failover_decisions (cluster, at DESC);

-- Settings changed at run time, with who changed them.
CREATE TABLE runtime_settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL
);

-- Nodes the server keeps fenced: the old master of a failover, a second MASTER fenced in favour
-- of the leader. Whenever such a node reports an unfenced instance it is fenced again, until a
-- person lifts the fence (POST /api/v1/clusters/{cluster}/nodes/{node}/unfence), which deletes
-- the row.
CREATE TABLE kept_fenced (
    cluster  text NOT NULL REFERENCES clusters (name),
    node_id  text NOT NULL,
    since    timestamptz NOT NULL DEFAULT now(),
    reason   text NOT NULL,
    PRIMARY KEY (cluster, node_id)
);
