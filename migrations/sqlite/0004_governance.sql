-- Governance records (issue 12): what kind of call a record is and how it travelled, the
-- prompt that was asked and every tool call the model made, and the per-provider settings
-- that govern them. Prompts and tool calls are deleted with their interception.
ALTER TABLE interceptions ADD COLUMN route TEXT NOT NULL DEFAULT 'model';
ALTER TABLE interceptions ADD COLUMN transport TEXT NOT NULL DEFAULT 'http';
-- Records written before routes were classed: a model call is a POST to a model route.
UPDATE interceptions SET route = 'passthrough'
 WHERE NOT (method = 'POST' AND (path LIKE '%/completions' OR path LIKE '%/responses'
            OR path LIKE '%/messages' OR path LIKE '%/embeddings'));
CREATE INDEX interceptions_route ON interceptions (route, started_at);

CREATE TABLE interception_prompts (
    interception_id BLOB PRIMARY KEY NOT NULL REFERENCES interceptions (id) ON DELETE CASCADE,
    text            TEXT NOT NULL,
    truncated       BOOLEAN NOT NULL
);

CREATE TABLE interception_tool_calls (
    interception_id BLOB NOT NULL REFERENCES interceptions (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    call_id         TEXT,
    name            TEXT NOT NULL,
    type            TEXT NOT NULL,
    arguments       TEXT NOT NULL,
    truncated       BOOLEAN NOT NULL,
    PRIMARY KEY (interception_id, seq)
);
CREATE INDEX interception_tool_calls_name ON interception_tool_calls (name, interception_id);

ALTER TABLE ai_providers ADD COLUMN passthrough TEXT NOT NULL DEFAULT 'forward'
    CHECK (passthrough IN ('forward', 'deny'));
ALTER TABLE ai_providers ADD COLUMN record_prompts BOOLEAN NOT NULL DEFAULT 1;
