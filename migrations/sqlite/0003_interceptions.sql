-- One row per bridged request (SPEC §4). Written in batches off the request path.
CREATE TABLE interceptions (
    id                 BLOB PRIMARY KEY NOT NULL,
    request_id         TEXT NOT NULL,
    token_id           BLOB,
    user_label         TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT,
    method             TEXT NOT NULL,
    path               TEXT NOT NULL,
    status             INTEGER NOT NULL,
    input_tokens       INTEGER,
    output_tokens      INTEGER,
    cache_read_tokens  INTEGER,
    cache_write_tokens INTEGER,
    usage_source       TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    started_at         TEXT NOT NULL,
    duration_ms        INTEGER NOT NULL,
    ttfb_ms            INTEGER,
    error              TEXT
);
CREATE INDEX interceptions_started_at ON interceptions (started_at, id);
CREATE INDEX interceptions_provider ON interceptions (provider, started_at);
CREATE INDEX interceptions_user ON interceptions (user_label, started_at);
CREATE INDEX interceptions_model ON interceptions (model, started_at);
