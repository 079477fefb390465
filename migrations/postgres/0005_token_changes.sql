-- Control plane at scale (issue 18): tokens may expire, and token writes are logged so replicas
-- apply them as deltas instead of rebuilding the whole router.
ALTER TABLE agent_tokens ADD COLUMN expires_at TIMESTAMPTZ;

-- One row per token a committed change touched, under that change's counter (a batch writes many
-- rows under one counter). A reloader reads the rows after the counter its snapshot reflects;
-- a counter with no row (a provider or model write, a hand edit) or a pruned range is a gap,
-- and a gap means a full reload.
CREATE TABLE aibridge_change_log (
    counter BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    ref_id  UUID NOT NULL,
    PRIMARY KEY (counter, ref_id)
);
