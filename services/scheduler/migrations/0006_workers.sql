-- Multi-worker experiments (workers: N): one row per rank of each attempt, placed all or none.
-- status: pending (placed; its assignment waits for rank 0's rendezvous port), assigned,
-- running, stopping (its attempt was lost; the agent is told to stop it), done.
CREATE TABLE workers (
    experiment_id   uuid NOT NULL,
    attempt         integer NOT NULL,
    rank            integer NOT NULL,
    agent_id        text NOT NULL,
    local_rank      integer NOT NULL DEFAULT 0,
    gpus            integer[] NOT NULL DEFAULT '{}',
    status          text NOT NULL,
    agent_instance  uuid,
    pid             integer,
    argv            jsonb,
    workdir         text,
    inputs          jsonb,
    started_at      timestamptz,
    finished_at     timestamptz,
    outcome         text,
    exit_code       integer,
    signal          integer,
    reason          text,
    log_lines       integer NOT NULL DEFAULT 0,
    outputs         jsonb NOT NULL DEFAULT '[]',
    outputs_skipped jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (experiment_id, attempt, rank)
);
CREATE INDEX workers_active ON workers (agent_id)
    WHERE status IN ('pending', 'assigned', 'running', 'stopping');
-- The rendezvous rank 0 chose, and which rank decided a gang's failure.
ALTER TABLE experiments ADD COLUMN master_addr text;
ALTER TABLE experiments ADD COLUMN master_port integer;
ALTER TABLE experiments ADD COLUMN failed_rank integer;
-- An address of the agent's machine the other agents can reach (MASTER_ADDR).
ALTER TABLE agents ADD COLUMN address text NOT NULL DEFAULT '';
