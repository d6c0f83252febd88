-- Sweep trials: the sweep an experiment belongs to and how many of its trials may be
-- assigned or running at once (NULL: no limit). Placement never exceeds it.
ALTER TABLE experiments ADD COLUMN sweep_id uuid;
ALTER TABLE experiments ADD COLUMN sweep_parallelism integer;
CREATE INDEX experiments_sweep_active ON experiments (sweep_id)
    WHERE sweep_id IS NOT NULL AND status IN ('assigned', 'running');
