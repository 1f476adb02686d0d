-- A run of kind vip_follow: keepalived moved the VIP to a standby's host and the database
-- follows it (a lossless switchover of the primary to the VIP holder; the VIP does not move).
ALTER TABLE switchovers DROP CONSTRAINT switchovers_kind_check;
ALTER TABLE switchovers ADD CONSTRAINT switchovers_kind_check
    CHECK (kind IN ('switchover', 'failover', 'vip_follow'));
