-- API tokens: only a SHA-256 of the secret is kept (tokens are 256-bit random, so a slow hash
-- adds nothing); the prefix is shown in listings so a user can tell tokens apart.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    prefix       text NOT NULL,
    hash         bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

-- The sweep an experiment belongs to and the code snapshot it runs; IF NOT EXISTS, as the
-- sweeps and code work may add the same columns.
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS sweep_id uuid;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS code text;
CREATE INDEX IF NOT EXISTS experiments_by_sweep ON experiments (sweep_id, id DESC);
CREATE INDEX IF NOT EXISTS experiments_by_tag ON experiments USING gin (tags);
