-- The triage of alerts (CONTRACT §7), projected from the triage topic.
-- triage: the latest record of each alert, keyed by the alert's input coordinates like records;
-- a row may arrive before its alert's row (each topic has its own consumer).
-- status: 0 open, 1 acknowledged, 2 resolved.
CREATE TABLE triage (
    part INTEGER NOT NULL,
    off INTEGER NOT NULL,
    status INTEGER NOT NULL,
    resolution TEXT,
    note TEXT,
    triaged_by TEXT,
    triaged_at TEXT,
    PRIMARY KEY (part, off)
) WITHOUT ROWID;

-- The same status on the alert's own row, so that GET /api/v1/alerts?status= is one ordered
-- index range, newest first, whatever the share of each status (open = no triage or reopened).
ALTER TABLE records ADD COLUMN triage_status INTEGER NOT NULL DEFAULT 0;
CREATE INDEX records_triage ON records (triage_status, ts, part, off) WHERE is_alert = 1;
