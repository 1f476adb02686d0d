-- A cluster paused by hand (PUT /api/v1/clusters/{cluster}/pause), until resumed: the arbiter
-- keeps judging and recording it, but takes no automatic action (like a maintenance window
-- over the cluster, without an end).
CREATE TABLE cluster_pauses (
    cluster     text PRIMARY KEY,
    paused_by   text NOT NULL,
    reason      text NOT NULL,
    paused_at   timestamptz NOT NULL DEFAULT now()
);
