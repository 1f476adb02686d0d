-- Alerts and their notifications (a durable outbox).

-- One row per alert episode. While pending or firing, one row per fingerprint.
CREATE TABLE alerts (
    id                uuid PRIMARY KEY,
    fingerprint       text NOT NULL,          -- rule + what it concerns: 'node_down:c/n1'
    rule              text NOT NULL,
    severity          text NOT NULL CHECK (severity IN ('critical', 'warning', 'info')),
    cluster           text NOT NULL,
    node_id           text,
    instance          text,
    link              text,
    summary           text NOT NULL,
    state             text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    active_since      timestamptz NOT NULL,   -- when the condition was first seen
    fired_at          timestamptz,
    resolved_at       timestamptz,
    last_notified_at  timestamptz
);
CREATE UNIQUE INDEX alerts_one_active ON alerts (fingerprint) WHERE state IN ('pending', 'firing');
CREATE INDEX alerts_recent ON alerts (active_since DESC);

-- Stored before it is sent; sent at least once and recorded once delivered.
CREATE TABLE notifications (
    id               uuid PRIMARY KEY,
    alert_id         uuid NOT NULL REFERENCES alerts (id),
    receiver         text NOT NULL,           -- 'email:oncall', 'sms:pager', 'webhook:chat'
    kind             text NOT NULL CHECK (kind IN ('firing', 'repeat', 'resolved')),
    subject          text NOT NULL,
    body             text NOT NULL,
    state            text NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE state = 'pending';
