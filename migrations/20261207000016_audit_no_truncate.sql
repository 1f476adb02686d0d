-- The audit log is append-only for TRUNCATE too (the row trigger does not see it). The database
-- owner can still drop the trigger or the table: the README says so.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
