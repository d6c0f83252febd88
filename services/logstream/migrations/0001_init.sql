-- Every output line of every run, numbered per attempt (seq starts at 1).
CREATE TABLE lines (
    experiment_id uuid NOT NULL,
    attempt       integer NOT NULL,
    seq           integer NOT NULL,
    stream        text NOT NULL,
    ts            timestamptz NOT NULL,
    line          text NOT NULL,
    PRIMARY KEY (experiment_id, attempt, seq)
);
