-- Projects: a name, a typed options schema (FGLab's flat format) and a run spec.
CREATE TABLE projects (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    schema     jsonb NOT NULL,
    run        jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The experiments read model: written on submission, then kept up to date from events.
CREATE TABLE experiments (
    id            uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (id),
    name          text,
    options       jsonb NOT NULL,
    notes         text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'queued',
    status_reason text,
    agent_id      text,
    attempt       integer NOT NULL DEFAULT 1,
    exit_code     integer,
    signal        integer,
    log_lines     integer,
    priority      integer NOT NULL DEFAULT 0,
    tags          text[] NOT NULL DEFAULT '{}',
    results       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX experiments_by_project ON experiments (project_id, id DESC);
CREATE INDEX experiments_by_status ON experiments (status, id DESC);
