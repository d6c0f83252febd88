-- Agents as their heartbeats describe them; online until their lease runs out.
CREATE TABLE agents (
    id          text PRIMARY KEY,
    instance_id uuid NOT NULL,
    hostname    text NOT NULL DEFAULT '',
    slots       integer NOT NULL,
    labels      text[] NOT NULL DEFAULT '{}',
    hardware    jsonb NOT NULL DEFAULT '{}',
    running     uuid[] NOT NULL DEFAULT '{}',
    online      boolean NOT NULL DEFAULT true,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- The queue and what runs where. status: queued, assigned, running, done, lost.
CREATE TABLE experiments (
    id               uuid PRIMARY KEY,
    project          text NOT NULL,
    options          jsonb NOT NULL,
    run              jsonb NOT NULL,
    priority         integer NOT NULL DEFAULT 0,
    status           text NOT NULL,
    attempt          integer NOT NULL DEFAULT 1,
    agent_id         text,
    agent_instance   uuid,
    submitted_at     timestamptz NOT NULL,
    assigned_at      timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    outcome          text,
    reason           text
);
CREATE INDEX experiments_queue ON experiments (priority DESC, submitted_at, id)
    WHERE status = 'queued';
CREATE INDEX experiments_agent ON experiments (agent_id) WHERE status IN ('assigned', 'running');
