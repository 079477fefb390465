-- One row per bridged request (SPEC §4). Written in batches off the request path.
CREATE TABLE interceptions (
    id                 UUID PRIMARY KEY,
    request_id         TEXT NOT NULL,
    token_id           UUID,
    user_label         TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT,
    method             TEXT NOT NULL,
    path               TEXT NOT NULL,
    status             INTEGER NOT NULL,
    input_tokens       BIGINT,
    output_tokens      BIGINT,
    cache_read_tokens  BIGINT,
    cache_write_tokens BIGINT,
    usage_source       TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL,
    duration_ms        BIGINT NOT NULL,
    ttfb_ms            BIGINT,
    error              TEXT
);
CREATE INDEX interceptions_started_at ON interceptions (started_at, id);
CREATE INDEX interceptions_provider ON interceptions (provider, started_at);
CREATE INDEX interceptions_user ON interceptions (user_label, started_at);
CREATE INDEX interceptions_model ON interceptions (model, started_at);
