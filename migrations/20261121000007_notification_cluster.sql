-- Notifications are delivered grouped per receiver and cluster: what one evaluation round
-- stored for a cluster goes out as one message.
ALTER TABLE notifications ADD COLUMN cluster text NOT NULL DEFAULT '';
