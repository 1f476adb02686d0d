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
-- instance's backup). '' (rows from before) fences the node in every instance.
ALTER TABLE kept_fenced ADD COLUMN instance text NOT NULL DEFAULT '';
ALTER TABLE kept_fenced DROP CONSTRAINT kept_fenced_pkey;
ALTER TABLE kept_fenced ADD PRIMARY KEY (cluster, node_id, instance);
