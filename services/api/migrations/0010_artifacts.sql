-- Files of an experiment in the artifact store: outputs (uploaded by the agent when the run
-- ended), inputs and code snapshots. One row per file of the latest attempt.
CREATE TABLE artifacts (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    kind          text NOT NULL,
    name          text NOT NULL,
    attempt       integer NOT NULL,
    size          bigint NOT NULL,
    sha256        text,
    key           text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, kind, name)
);
