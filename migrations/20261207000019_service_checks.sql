-- Service checks (protocol 3): each node's latest checks, as its last stored report gave them
-- (a JSON array of ServiceCheckReport), reloaded into live state at start-up. Their history is
-- the check_failing / check_passing events.
ALTER TABLE nodes ADD COLUMN checks jsonb NOT NULL DEFAULT '[]'::jsonb;
