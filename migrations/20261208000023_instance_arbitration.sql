-- Per-instance arbitration: every VRRP instance of a cluster (with the replication link that
-- carries its data) has its own leader and verdicts, so a dual-active pair or an N+1 group fails
-- over one instance without touching the others.

-- The master of the current epoch per VRRP instance: {"VI_1": "h1", "VI_2": "h2"}. The older
-- `leader` column stays the leader found last (read as the first instance's when `leaders` does
-- not name it yet, after an upgrade).
ALTER TABLE clusters ADD COLUMN leaders jsonb NOT NULL DEFAULT '{}';

-- The VRRP instance a verdict is about (NULL for verdicts recorded before).
ALTER TABLE failover_decisions ADD COLUMN instance text;

-- Kept fences per VRRP instance: the old master of a failover of VI_1 stays fenced in VI_1, not
-- in the other instances it runs (a dual-active host coming back keeps serving as the other
-- instance's backup). A table of its own, so that a server of the previous version, still
-- running during a rolling upgrade, keeps writing `kept_fenced` (ON CONFLICT on its key) and
-- its rows keep meaning what they meant: fenced in every instance. A later release folds
-- `kept_fenced` into this table.
CREATE TABLE kept_fences (
    cluster   text NOT NULL REFERENCES clusters (name),
    node_id   text NOT NULL,
    instance  text NOT NULL,
    since     timestamptz NOT NULL DEFAULT now(),
    reason    text NOT NULL,
    PRIMARY KEY (cluster, node_id, instance)
);
