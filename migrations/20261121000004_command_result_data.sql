-- Facts an agent reports with a command's result (e.g. the shutdown checkpoint LSN of a stopped
-- PostgreSQL primary), as a JSON object of strings.
ALTER TABLE commands ADD COLUMN result_data jsonb NOT NULL DEFAULT '{}';
