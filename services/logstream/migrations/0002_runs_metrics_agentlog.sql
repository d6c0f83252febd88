-- One row per run attempt: how much of its log is stored, how it ended, where its archive is.
-- Kept up to date with every batch, so "how many lines" never counts the lines table.
CREATE TABLE runs (
    experiment_id uuid NOT NULL,
    attempt       integer NOT NULL,
    stored        bigint NOT NULL DEFAULT 0,
    last_seq      integer NOT NULL DEFAULT 0,
    bytes         bigint NOT NULL DEFAULT 0,
    project       text,
    status        text,
    log_lines     integer,
    finished_at   timestamptz,
    archive_key   text,
    archived_at   timestamptz,
    archive_complete boolean,
    expired_at    timestamptz,
    PRIMARY KEY (experiment_id, attempt)
);

INSERT INTO runs (experiment_id, attempt, stored, last_seq, bytes)
SELECT experiment_id, attempt, count(*), max(seq), sum(octet_length(line))
FROM lines GROUP BY experiment_id, attempt;

CREATE INDEX runs_to_archive ON runs (finished_at) WHERE archived_at IS NULL AND finished_at IS NOT NULL;
CREATE INDEX runs_by_project ON runs (project, finished_at) WHERE expired_at IS NULL;

-- The project of each experiment (from the scheduler's assignments), for retention.
CREATE TABLE experiments (
    experiment_id uuid PRIMARY KEY,
    project       text NOT NULL
);

-- Each agent's own log, bounded per agent by the retention loop.
CREATE TABLE agent_lines (
    id       bigserial PRIMARY KEY,
    agent_id text NOT NULL,
    ts       timestamptz NOT NULL,
    level    text NOT NULL,
    line     text NOT NULL
);
CREATE INDEX agent_lines_by_agent ON agent_lines (agent_id, id);

-- Every metric point, written with COPY; read per experiment and name in ingest order.
CREATE TABLE metric_points (
    id            bigserial PRIMARY KEY,
    experiment_id uuid NOT NULL,
    attempt       integer NOT NULL,
    name          text NOT NULL,
    step          bigint,
    value         double precision NOT NULL,
    ts            timestamptz NOT NULL,
    cumulative    boolean NOT NULL DEFAULT false,
    metadata      text  -- JSON (a text column: COPY in binary has no jsonb encoder here)
);
CREATE INDEX metric_points_series ON metric_points (experiment_id, name, id);

-- Each metric's last, min and max per experiment: what lists sort and filter on.
CREATE TABLE metric_summary (
    experiment_id uuid NOT NULL,
    name          text NOT NULL,
    last          double precision NOT NULL,
    last_step     bigint,
    last_ts       timestamptz NOT NULL,
    min           double precision NOT NULL,
    max           double precision NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (experiment_id, name)
);
CREATE INDEX metric_summary_by_name_last ON metric_summary (name, last);

-- A run's _scores (fleetlab.result), the latest value of each.
CREATE TABLE scores (
    experiment_id uuid NOT NULL,
    name          text NOT NULL,
    value         double precision NOT NULL,
    PRIMARY KEY (experiment_id, name)
);
