-- Models offered per provider, and the one default (SPEC §5 ai_models).
CREATE TABLE ai_models (
    id            BLOB PRIMARY KEY NOT NULL,
    provider_id   BLOB NOT NULL REFERENCES ai_providers (id) ON DELETE CASCADE,
    model         TEXT NOT NULL,
    display_name  TEXT,
    context_limit INTEGER CHECK (context_limit IS NULL OR context_limit > 0),
    enabled       BOOLEAN NOT NULL DEFAULT 1,
    is_default    BOOLEAN NOT NULL DEFAULT 0,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (provider_id, model)
);
-- At most one default; the store keeps "at least one while any model exists".
CREATE UNIQUE INDEX ai_models_one_default ON ai_models (is_default) WHERE is_default;
