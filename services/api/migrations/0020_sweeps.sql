-- Sweeps: a search over a project's options. The sweep row and every one of its trials
-- (experiments with sweep_id) are written in one transaction, with their submission events
-- in the outbox, so a sweep exists whole or not at all, and each trial exactly once.
CREATE TABLE sweeps (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text,
    method      text NOT NULL,
    parameters  json NOT NULL,
    count       integer NOT NULL,
    parallelism integer,
    seed        bigint,
    metric      text,
    goal        text NOT NULL DEFAULT 'maximize',
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when a user stopped the sweep.
    stopped_at  timestamptz,
    -- Set once, in the transaction that saw its last trial end (and published sweep.finished).
    finished_at timestamptz
);
CREATE INDEX sweeps_by_project ON sweeps (project_id, id DESC);
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS sweep_id uuid;
CREATE INDEX IF NOT EXISTS experiments_by_sweep ON experiments (sweep_id, id DESC);
CREATE INDEX IF NOT EXISTS experiments_sweep_status ON experiments (sweep_id, status)
    WHERE sweep_id IS NOT NULL;
