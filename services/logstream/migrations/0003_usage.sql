-- Resource use sampled by agents every few seconds (agent.usage.sampled): the machine's, each
-- of its GPUs', and each running experiment's process tree. Pruned by age (usage_max_age_days).
CREATE TABLE agent_usage (
    id              bigserial PRIMARY KEY,
    agent_id        text NOT NULL,
    ts              timestamptz NOT NULL,
    cpu_percent     double precision NOT NULL,
    memory_used_mb  double precision NOT NULL,
    memory_total_mb double precision NOT NULL
);
CREATE INDEX agent_usage_by_agent ON agent_usage (agent_id, ts);
CREATE INDEX agent_usage_by_ts ON agent_usage (ts);

CREATE TABLE agent_gpu_usage (
    agent_id        text NOT NULL,
    ts              timestamptz NOT NULL,
    gpu             integer NOT NULL,
    utilization     double precision NOT NULL,
    memory_used_mb  double precision NOT NULL,
    memory_total_mb double precision NOT NULL
);
CREATE INDEX agent_gpu_usage_by_agent ON agent_gpu_usage (agent_id, ts);

CREATE TABLE experiment_usage (
    id            bigserial PRIMARY KEY,
    experiment_id uuid NOT NULL,
    attempt       integer NOT NULL,
    agent_id      text NOT NULL,
    ts            timestamptz NOT NULL,
    cpu_percent   double precision NOT NULL,
    rss_mb        double precision NOT NULL,
    processes     integer NOT NULL,
    gpu_percent   double precision,
    gpu_memory_mb double precision
);
CREATE INDEX experiment_usage_by_experiment ON experiment_usage (experiment_id, ts);
CREATE INDEX experiment_usage_by_ts ON experiment_usage (ts);
