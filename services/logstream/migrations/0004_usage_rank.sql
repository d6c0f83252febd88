-- Each rank of a multi-worker experiment is sampled on its own (agent.usage.sampled carries
-- its rank): the rank beside the agent it ran on; null for a single process.
ALTER TABLE experiment_usage ADD COLUMN rank integer;
