-- One row: the replica that leads (runs the detector, the arbiter, alerting, switchover runs and
-- history upkeep) until expires_at (database clock). A replica takes the lease when it has
-- expired; term counts every change of holder (a fencing counter: commands and runs name it).
CREATE TABLE server_leader (
    id             smallint PRIMARY KEY CHECK (id = 1),
    holder         uuid NOT NULL,              -- the leading process (new at every start)
    term           bigint NOT NULL,
    advertise_url  text NOT NULL,              -- where agents and browsers reach the leader
    acquired_at    timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);
