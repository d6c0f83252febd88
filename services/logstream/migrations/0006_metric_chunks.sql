-- Metric points are stored by the batch, one row per metric name a batch holds (a chunk), its
-- points as arrays in the order they came, not a row per point: a run logging 100,000 points
-- a second is a few hundred rows a second. A point's id (the raw read's cursor) is its
-- chunk's id * 1,000,000 + its place in the chunk (a batch holds far fewer points: it fits a
-- NATS message).
CREATE TABLE metric_chunks (
    id            bigserial PRIMARY KEY,
    experiment_id uuid NOT NULL,
    attempt       integer NOT NULL,
    name          text NOT NULL,
    steps         bigint[] NOT NULL,
    vals          double precision[] NOT NULL,
    ts            timestamptz[] NOT NULL,
    cumulative    boolean[],  -- NULL: no point of the chunk is cumulative
    metadata      text[]      -- NULL: no point of the chunk has metadata (JSON text each)
);
CREATE INDEX metric_chunks_series ON metric_chunks (experiment_id, name, id);

INSERT INTO metric_chunks (experiment_id, attempt, name, steps, vals, ts, cumulative, metadata)
SELECT experiment_id, attempt, name,
       array_agg(step ORDER BY id), array_agg(value ORDER BY id), array_agg(ts ORDER BY id),
       CASE WHEN bool_or(cumulative) THEN array_agg(cumulative ORDER BY id) END,
       CASE WHEN count(metadata) > 0 THEN array_agg(metadata ORDER BY id) END
FROM metric_points
GROUP BY experiment_id, attempt, name, id / 1000
ORDER BY min(id);

DROP TABLE metric_points;
