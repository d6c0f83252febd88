-- Registered endpoints and the history of every delivery attempt (one row per attempt).
CREATE TABLE endpoints (
    id          uuid PRIMARY KEY,
    url         text NOT NULL,
    events      text[] NOT NULL,
    secret      text,
    project     text,
    experiment  uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    id            uuid PRIMARY KEY,
    endpoint_id   uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    event_id      uuid NOT NULL,
    event_type    text NOT NULL,
    attempt       integer NOT NULL,
    status_code   integer,
    error         text,
    response_body text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, created_at DESC);
