-- Output lines are stored by the batch the agent sent them in (a chunk), not a row per line:
-- a run printing 100,000 lines a second is 200 rows a second, not 100,000 rows and their index
-- entries. A chunk holds its lines as the JSON array the agent sent ({"seq", "stream", "ts",
-- "line"}, and "rank" for a worker of a multi-worker run); its seq range finds it. A batch
-- delivered again has the same first line: it is stored once.
CREATE TABLE chunks (
    experiment_id uuid NOT NULL,
    attempt       integer NOT NULL,
    first_seq     integer NOT NULL,
    last_seq      integer NOT NULL,
    count         integer NOT NULL,
    lines         text NOT NULL,
    PRIMARY KEY (experiment_id, attempt, first_seq)
);
CREATE INDEX chunks_by_last_seq ON chunks (experiment_id, attempt, last_seq);

INSERT INTO chunks (experiment_id, attempt, first_seq, last_seq, count, lines)
SELECT experiment_id, attempt, min(seq), max(seq), count(*),
       json_agg(json_build_object('seq', seq, 'stream', stream, 'ts', ts, 'line', line)
                ORDER BY seq)::text
FROM lines GROUP BY experiment_id, attempt, (seq - 1) / 500;

DROP TABLE lines;
