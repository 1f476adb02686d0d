-- Per-instance arbitration: every VRRP instance of a cluster (with the replication link that
-- carries its data) has its own leader and verdicts, so a dual-active pair or an N+1 group fails
-- over one instance without touching the others.

-- The master of the current epoch per VRRP instance: {"VI_1": "h1", "VI_2": "h2"}. The older
-- `leader` column stays the leader found last (read as the first instance's when `leaders` does
-- not name it yet, after an upgrade).
ALTER TABLE clusters ADD COLUMN leaders jsonb NOT NULL DEFAULT '{}';

-- The VRRP instance a verdict is about (NULL for verdicts recorded before).
ALTER TABLE failover_decisions ADD COLUMN instance text;
