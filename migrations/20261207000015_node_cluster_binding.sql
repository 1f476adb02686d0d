-- A node credential is bound to its node and its cluster: a report into another cluster is
-- refused. An enrollment token names both.
ALTER TABLE enrollment_tokens ADD COLUMN cluster text;
ALTER TABLE node_credentials ADD COLUMN cluster text;
-- Credentials of nodes that already reported are bound to the cluster they report in; the rest
-- (enrolled with a token from before this migration, never reported) are bound by their first
-- report.
UPDATE node_credentials c SET cluster = n.cluster FROM nodes n WHERE n.node_id = c.node_id;
