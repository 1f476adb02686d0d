-- Pacemaker clusters (issue 21): each node's latest crm_mon view (a PacemakerReport as JSON),
-- as its last stored report gave it, reloaded into live state at start-up; NULL for agents
-- without [pacemaker]. Its history is the pacemaker_* events.
ALTER TABLE nodes ADD COLUMN pacemaker jsonb;
