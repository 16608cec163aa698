-- Messaging: channel behaviour and adapter state, the inbound event log, the outbox.
-- Times are INTEGER Unix microseconds (UTC), as everywhere else.

-- JSON of voronka_core::channel::ChannelSettings; '{}' reads as the defaults (every
-- attribute has a serde default), so channels created before this migration behave
-- like new ones.
ALTER TABLE channels ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
-- JSON of ChannelRuntime (webhook mode, account name, last error).
ALTER TABLE channels ADD COLUMN runtime TEXT NOT NULL DEFAULT '{}';

-- Every provider event is stored here before the webhook is acknowledged, then processed
-- from here: a crash between the two loses nothing, and the UNIQUE key turns provider
-- retries into no-ops. contact_id and identity_id are set when the event is processed.
CREATE TABLE inbound_events (
    id                 INTEGER PRIMARY KEY,
    workspace_id       INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    channel_id         INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    provider_event_id  TEXT    NOT NULL,
    payload            TEXT    NOT NULL,            -- JSON of InboundEvent
    received_at        INTEGER NOT NULL,
    state              TEXT    NOT NULL DEFAULT 'pending',   -- pending | done | failed
    attempts           INTEGER NOT NULL DEFAULT 0,
    error              TEXT,
    processed_at       INTEGER,
    contact_id         INTEGER REFERENCES contacts(id) ON DELETE CASCADE,
    identity_id        INTEGER,                     -- no foreign key: the log outlives it
    UNIQUE (channel_id, provider_event_id)
);
-- The processing queue: small, since processed rows leave it.
CREATE INDEX inbound_pending ON inbound_events(id) WHERE state = 'pending';
-- The conversation view. Partial: pending rows (the hot insert path) skip both.
CREATE INDEX inbound_identity ON inbound_events(identity_id, id) WHERE identity_id IS NOT NULL;
-- Erasure and the contacts cascade find a contact's rows through this.
CREATE INDEX inbound_contact ON inbound_events(contact_id) WHERE contact_id IS NOT NULL;

-- Every outgoing message. A delivery worker claims due rows (state sending, with a lease
-- so a dead worker's rows come back), then records the outcome.
CREATE TABLE outbox (
    id                    INTEGER PRIMARY KEY,
    workspace_id          INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    channel_id            INTEGER NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    contact_id            INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    identity_id           INTEGER NOT NULL,         -- no foreign key: history outlives it
    external_id           TEXT    NOT NULL,         -- copied: sending needs no join
    purpose               TEXT    NOT NULL,         -- response | transactional | marketing
    message               TEXT    NOT NULL,         -- JSON of OutboundMessage
    has_choices           INTEGER NOT NULL DEFAULT 0,   -- message has payload buttons
    source                TEXT    NOT NULL,
    state                 TEXT    NOT NULL DEFAULT 'queued',  -- queued | sending | sent | failed
    attempts              INTEGER NOT NULL DEFAULT 0,
    parts_sent            INTEGER NOT NULL DEFAULT 0,
    provider_message_ids  TEXT    NOT NULL DEFAULT '[]',      -- JSON array
    error                 TEXT,
    run_at                INTEGER NOT NULL,
    lease_until           INTEGER,
    created_at            INTEGER NOT NULL,
    sent_at               INTEGER
);
-- Claiming: a channel's due rows in run_at order. Partial, so sent and failed rows (the
-- bulk of the table over time) cost nothing here.
CREATE INDEX outbox_due ON outbox(channel_id, run_at) WHERE state IN ('queued', 'sending');
-- Counts per channel and state; also serves the channels cascade.
CREATE INDEX outbox_channel_state ON outbox(channel_id, state);
-- The conversation view and "last message with buttons".
CREATE INDEX outbox_identity ON outbox(identity_id, id);
-- Erasure and the contacts cascade.
CREATE INDEX outbox_contact ON outbox(contact_id);
