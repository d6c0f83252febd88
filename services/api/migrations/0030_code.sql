-- Code snapshots (POST /api/v1/code): one row per distinct content, keyed by the SHA-256 of
-- its canonical archive, which lies in the artifact store under `key`. `files` lists every
-- file as {"path", "size", "executable"}, sorted by path.
CREATE TABLE code_snapshots (
    digest        text PRIMARY KEY,
    size          bigint NOT NULL,
    unpacked_size bigint NOT NULL,
    file_count    integer NOT NULL,
    files         jsonb NOT NULL,
    key           text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX code_snapshots_by_time ON code_snapshots (created_at DESC, digest);
