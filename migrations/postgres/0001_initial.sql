-- Providers, their keys and agent tokens (SPEC §5).
CREATE TABLE ai_providers (
    id              UUID PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL CHECK (kind IN ('openai', 'anthropic', 'openai-compatible')),
    base_url        TEXT NOT NULL,
    intercept_hosts JSONB NOT NULL DEFAULT '[]',
    enabled         BOOLEAN NOT NULL DEFAULT TRUE,
    enforce_models  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE ai_provider_keys (
    id          UUID PRIMARY KEY,
    provider_id UUID NOT NULL REFERENCES ai_providers (id) ON DELETE CASCADE,
    api_key     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX ai_provider_keys_provider_id ON ai_provider_keys (provider_id);

CREATE TABLE agent_tokens (
    id           UUID PRIMARY KEY,
    user_label   TEXT NOT NULL,
    token_hash   BYTEA NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

-- Bumped by every mutation, next to its NOTIFY; lets a reconnecting listener tell whether it
-- missed anything.
CREATE TABLE aibridge_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    counter BIGINT NOT NULL
);
INSERT INTO aibridge_changes (id, counter) VALUES (1, 0);
