-- A run of kind rejoin: a node the server keeps fenced (the old master of a failover) came
-- back; its database rejoins as a standby of the current primary while it stays fenced.
ALTER TABLE switchovers DROP CONSTRAINT switchovers_kind_check;
ALTER TABLE switchovers ADD CONSTRAINT switchovers_kind_check
    CHECK (kind IN ('switchover', 'failover', 'vip_follow', 'rejoin'));
