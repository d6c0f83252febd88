-- Projects an agent runs with commands of its own (FGMachine projects.json).
ALTER TABLE agents ADD COLUMN projects text[] NOT NULL DEFAULT '{}';
