-- Foundation: workspaces, users, API keys, channels, the contact base, consent, events.
-- Times are INTEGER Unix microseconds (UTC). Every table holding business data carries
-- workspace_id; the store's queries always filter by it.

CREATE TABLE workspaces (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Users are accounts across workspaces; memberships give them a role in one.
CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    email          TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    name           TEXT    NOT NULL,
    password_hash  TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE memberships (
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role          TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    prefix        TEXT    NOT NULL UNIQUE,
    secret_hash   TEXT    NOT NULL,
    scopes        TEXT    NOT NULL,          -- space-separated scope names
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX api_keys_ws ON api_keys(workspace_id);

CREATE TABLE channels (
    id                  INTEGER PRIMARY KEY,
    workspace_id        INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    kind                TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    credentials         BLOB    NOT NULL,    -- nonce + XChaCha20-Poly1305 ciphertext
    credentials_key_id  TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX channels_ws ON channels(workspace_id);

CREATE TABLE contacts (
    id                INTEGER PRIMARY KEY,
    workspace_id      INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    first_name        TEXT,
    last_name         TEXT,
    username          TEXT,
    language          TEXT,
    time_zone         TEXT,
    phone             TEXT,
    email             TEXT,
    avatar_url        TEXT,
    source            TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    last_activity_at  INTEGER,
    erased_at         INTEGER
);
CREATE INDEX contacts_ws ON contacts(workspace_id, id);
CREATE INDEX contacts_phone ON contacts(workspace_id, phone) WHERE phone IS NOT NULL;
CREATE INDEX contacts_email ON contacts(workspace_id, email) WHERE email IS NOT NULL;

-- One row per (channel, external id); the current subscription lives on the identity,
-- its history in subscription_history.
CREATE TABLE identities (
    id                INTEGER PRIMARY KEY,
    workspace_id      INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id        INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    channel_id        INTEGER NOT NULL REFERENCES channels(id),
    external_id       TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    sub_state         TEXT    NOT NULL,
    sub_topics        TEXT    NOT NULL DEFAULT '[]',   -- JSON array
    proof_source      TEXT,
    proof_at          INTEGER,
    proof_text        TEXT,
    proof_ip          TEXT,
    proof_message_id  TEXT,
    sub_updated_at    INTEGER NOT NULL,
    UNIQUE (channel_id, external_id)
);
-- Filters on channel or subscription state probe a contact's identities through
-- identities_contact; no query scans identities by (workspace, channel, state).
CREATE INDEX identities_contact ON identities(contact_id);

-- Append-only. identity_id has no foreign key: history outlives a detached identity.
CREATE TABLE subscription_history (
    id                INTEGER PRIMARY KEY,
    workspace_id      INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id        INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    identity_id       INTEGER,
    channel_id        INTEGER NOT NULL,
    state             TEXT    NOT NULL,
    topics            TEXT    NOT NULL DEFAULT '[]',
    proof_source      TEXT,
    proof_at          INTEGER,
    proof_text        TEXT,
    proof_ip          TEXT,
    proof_message_id  TEXT,
    created_at        INTEGER NOT NULL
);
CREATE INDEX subscription_history_contact ON subscription_history(contact_id, id);

CREATE TABLE tags (
    id            INTEGER PRIMARY KEY,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (workspace_id, name)
);

-- Keyed by tag first: "everyone with tag X" is a range scan of the primary key.
CREATE TABLE contact_tags (
    tag_id        INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
    contact_id    INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    workspace_id  INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (tag_id, contact_id)
) WITHOUT ROWID;
CREATE INDEX contact_tags_contact ON contact_tags(contact_id);

CREATE TABLE field_definitions (
    id            INTEGER PRIMARY KEY,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    label         TEXT    NOT NULL,
    field_type    TEXT    NOT NULL,
    choices       TEXT    NOT NULL DEFAULT '[]',   -- JSON array
    created_at    INTEGER NOT NULL,
    UNIQUE (workspace_id, key)
);

-- value_num holds number/bool/date/datetime as a number, value_text the text form; one
-- index serves both kinds of condition (text fields have value_num NULL).
CREATE TABLE contact_fields (
    contact_id    INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    field_id      INTEGER NOT NULL REFERENCES field_definitions(id) ON DELETE CASCADE,
    workspace_id  INTEGER NOT NULL,
    value_text    TEXT,
    value_num     REAL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (contact_id, field_id)
) WITHOUT ROWID;
CREATE INDEX contact_fields_value ON contact_fields(field_id, value_num, value_text);

-- Append-only log per contact.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    contact_id    INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL,
    data          TEXT    NOT NULL DEFAULT '{}',    -- JSON object
    created_at    INTEGER NOT NULL
);
CREATE INDEX events_contact ON events(contact_id, id);

CREATE TABLE idempotency (
    workspace_id  INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    status        INTEGER,                  -- NULL while the request runs
    body          BLOB,
    contact_id    INTEGER,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
CREATE INDEX idempotency_contact ON idempotency(contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX idempotency_created ON idempotency(created_at);
