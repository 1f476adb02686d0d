-- Several moves in one cluster at once, one per VRRP instance and never two on one node: a
-- switchover, failover, VIP follow or rejoin names the nodes it touches (the members of its
-- instances and of the links carrying their data), and a new one is refused while an active
-- one of the cluster touches the same instance or any of the same nodes.

-- The nodes the move touches. Empty for a row written by a server of an earlier version: such
-- a move is taken to touch the whole cluster, as it did then.
ALTER TABLE switchovers ADD COLUMN nodes text[] NOT NULL DEFAULT '{}';

-- One active move per VRRP instance (it was one per cluster). Same name, so a server of the
-- previous version still running during a rolling upgrade reads a refusal as before (409).
DROP INDEX switchovers_one_active;
CREATE UNIQUE INDEX switchovers_one_active ON switchovers (cluster, instance)
    WHERE state IN ('scheduled', 'running');

-- No two active moves on one node. Checked under a lock per cluster taken for the rest of the
-- inserting transaction, so two inserts racing for one node are ordered: the second sees the
-- first once it commits (READ COMMITTED: each statement of the function reads anew). Raised as
-- a violation of `switchovers_one_active`, which every server version answers with 409.
CREATE FUNCTION switchovers_nodes_free() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    busy uuid;
BEGIN
    IF NEW.state NOT IN ('scheduled', 'running') THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('hapulse.switchovers:' || NEW.cluster, 0));
    SELECT id INTO busy FROM switchovers
     WHERE cluster = NEW.cluster
       AND state IN ('scheduled', 'running')
       AND id <> NEW.id
       AND (instance = NEW.instance
            OR cardinality(nodes) = 0 OR cardinality(NEW.nodes) = 0
            OR nodes && NEW.nodes)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'switchover % of cluster % touches the same instance or nodes', busy, NEW.cluster
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'switchovers_one_active',
                  TABLE = 'switchovers';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER switchovers_nodes_free BEFORE INSERT ON switchovers
    FOR EACH ROW EXECUTE FUNCTION switchovers_nodes_free();
