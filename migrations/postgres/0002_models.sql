-- Models offered per provider, and the one default (SPEC §5 ai_models).
CREATE TABLE ai_models (
    id            UUID PRIMARY KEY,
    provider_id   UUID NOT NULL REFERENCES ai_providers (id) ON DELETE CASCADE,
    model         TEXT NOT NULL,
    display_name  TEXT,
    context_limit BIGINT CHECK (context_limit IS NULL OR context_limit > 0),
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    is_default    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (provider_id, model)
);
-- At most one default; the store keeps "at least one while any model exists".
CREATE UNIQUE INDEX ai_models_one_default ON ai_models (is_default) WHERE is_default;
