-- Placement by resources and labels: agents can be drained; experiments hold GPU indices.
ALTER TABLE agents ADD COLUMN draining boolean NOT NULL DEFAULT false;
ALTER TABLE experiments ADD COLUMN gpus integer[] NOT NULL DEFAULT '{}';
