-- Flows: drafts and published versions, contacts' runs through them, the signals that
-- start or resume runs, per-step counters, subscription topics, workspace settings and
-- the scanners' high-water marks. Times are INTEGER Unix microseconds (UTC).

-- JSON of WorkspaceSettings; '{}' reads as the defaults (every attribute has a serde
-- default), so workspaces created before this migration need no row of their own.
ALTER TABLE workspaces ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';

CREATE TABLE topics (
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, key)
) WITHOUT ROWID;

CREATE TABLE flows (
    id                 INTEGER PRIMARY KEY,
    workspace_id       INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name               TEXT    NOT NULL,
    status             TEXT    NOT NULL DEFAULT 'draft',   -- draft | published | archived
    draft              TEXT    NOT NULL,                   -- JSON document, kept verbatim
    revision           INTEGER NOT NULL DEFAULT 1,
    published_version  INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (workspace_id, name)
);

-- Frozen: a run keeps executing the version it started on.
CREATE TABLE flow_versions (
    flow_id       INTEGER NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    workspace_id  INTEGER NOT NULL,
    document      TEXT    NOT NULL,
    published_at  INTEGER NOT NULL,
    PRIMARY KEY (flow_id, version)
);

-- One row per contact per run; its whole state lives here, a wait is a due_at.
-- channel_id has no foreign key: a run's record outlives the channel.
CREATE TABLE flow_runs (
    id            INTEGER PRIMARY KEY,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    flow_id       INTEGER NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    contact_id    INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    channel_id    INTEGER,
    status        TEXT    NOT NULL,   -- active | waiting | done | stopped | cancelled | failed
    step_id       TEXT    NOT NULL,
    wait          TEXT,               -- delay | answer | button | handoff
    due_at        INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    vars          TEXT    NOT NULL DEFAULT '{}',
    started_by    TEXT    NOT NULL,   -- the trigger (`keyword:price`, `api`, `flow:12`)
    error         TEXT,
    revision      INTEGER NOT NULL DEFAULT 1,
    lease_until   INTEGER,            -- claimed by a timer worker until then
    started_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    ended_at      INTEGER
);
-- The timer: waiting runs by wake-up time. Partial, so ended runs (the bulk of the table
-- over time) and untimed waits cost nothing here.
CREATE INDEX flow_runs_due ON flow_runs(due_at) WHERE status = 'waiting' AND due_at IS NOT NULL;
-- A contact's runs (live ones, "ever ran"), erasure, and the contacts cascade.
CREATE INDEX flow_runs_contact ON flow_runs(contact_id, flow_id);
-- Listing a flow's runs newest first, counts, archiving.
CREATE INDEX flow_runs_flow ON flow_runs(flow_id, id);

-- Work for the flow engine, consumed (deleted) in the transaction that applies it.
CREATE TABLE flow_signals (
    id            INTEGER PRIMARY KEY,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id    INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    channel_id    INTEGER,            -- no foreign key, as on flow_runs
    kind          TEXT    NOT NULL,
    data          TEXT    NOT NULL DEFAULT '{}',
    state         TEXT    NOT NULL DEFAULT 'pending',   -- pending | failed (parked)
    attempts      INTEGER NOT NULL DEFAULT 0,
    lease_until   INTEGER,
    error         TEXT,
    created_at    INTEGER NOT NULL
);
-- The queue, in processing order.
CREATE INDEX flow_signals_pending ON flow_signals(id) WHERE state = 'pending';
-- Per-contact exclusivity of claims, erasure, and the contacts cascade.
CREATE INDEX flow_signals_contact ON flow_signals(contact_id);

CREATE TABLE flow_step_counters (
    flow_id       INTEGER NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    step_id       TEXT    NOT NULL,
    workspace_id  INTEGER NOT NULL,
    entered       INTEGER NOT NULL DEFAULT 0,
    completed     INTEGER NOT NULL DEFAULT 0,
    dropped       INTEGER NOT NULL DEFAULT 0,
    clicked       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (flow_id, version, step_id)
) WITHOUT ROWID;

CREATE TABLE flow_scan_marks (
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    at            INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, key)
) WITHOUT ROWID;

-- The inactivity scanner: contacts whose last inbound falls in a window.
CREATE INDEX contacts_activity ON contacts(workspace_id, last_activity_at)
    WHERE last_activity_at IS NOT NULL;
