-- Why an agent refused a command, as the protocol's typed reason (RefusalReason: not_enabled,
-- stale_epoch, deadline_passed, wrong_node, already_executed); NULL for commands that ran, and
-- for refusals recorded before agents reported a reason.
ALTER TABLE commands ADD COLUMN refusal text;
