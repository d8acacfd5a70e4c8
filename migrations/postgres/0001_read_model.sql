-- The read model: one row per alerts-topic record, keyed by the input coordinates of its event.
-- ts is the alerts record's timestamp (ms): with (part, off) it is the order of every list.
-- etime is the event's own `time` (rules.time_unit), NULL when the input was not a valid event.
CREATE TABLE records (
    part BIGINT NOT NULL,
    off BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    user_id BIGINT,
    is_alert BIGINT NOT NULL,
    codes TEXT NOT NULL,
    etime BIGINT,
    body TEXT NOT NULL,
    PRIMARY KEY (part, off)
);

-- GET /api/v1/alerts, newest first.
CREATE INDEX records_alerts ON records (ts, part, off) WHERE is_alert = 1;
-- GET /api/v1/users/{id}/events, newest first, and GET /api/v1/alerts?user_id= (a user's rows,
-- filtered: a second index keyed by user would double the random page writes of every insert).
CREATE INDEX records_user ON records (user_id, ts, part, off);
-- Retention.
CREATE INDEX records_etime ON records (etime);

-- GET /api/v1/alerts?code=: one row per (code, alert).
CREATE TABLE alert_codes (
    code BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    part BIGINT NOT NULL,
    off BIGINT NOT NULL,
    PRIMARY KEY (code, ts, part, off)
);

-- Where the projection resumes: written in the same transaction as the rows it covers.
CREATE TABLE projection_offsets (
    topic TEXT NOT NULL,
    part BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, part)
);
