-- Delivery with history. `endpoints` gains what registration and pausing need; `deliveries`
-- becomes one row per (endpoint, event): the message, its state and its latest attempt
-- (`attempt` counts the attempts made); `attempts` keeps one row per attempt.

-- An FGLab-style endpoint can name any object id, so the filter is text.
ALTER TABLE endpoints ALTER COLUMN experiment TYPE text USING experiment::text;
ALTER TABLE endpoints
    ADD COLUMN kind           text NOT NULL DEFAULT 'standard'
                              CHECK (kind IN ('standard', 'fglab')),
    -- FGLab's contract: the registered JSON is what gets POSTed.
    ADD COLUMN fglab_body     jsonb,
    ADD COLUMN description    text NOT NULL DEFAULT '',
    ADD COLUMN paused_at      timestamptz,
    ADD COLUMN paused_reason  text,
    -- Set at the first failure after a success (or ever); cleared by a success.
    ADD COLUMN failing_since  timestamptz,
    ADD COLUMN updated_at     timestamptz NOT NULL DEFAULT now();

ALTER TABLE deliveries
    ALTER COLUMN attempt SET DEFAULT 0,
    ADD COLUMN public_type     text NOT NULL DEFAULT '',
    ADD COLUMN payload         text NOT NULL DEFAULT '',
    ADD COLUMN state           text NOT NULL DEFAULT 'pending'
                               CHECK (state IN ('pending', 'succeeded', 'failed')),
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A claimed delivery is someone's until then; after a crash it is simply retried.
    ADD COLUMN locked_until    timestamptz,
    ADD COLUMN last_attempt_at timestamptz,
    ADD COLUMN latency_ms      double precision,
    -- The next attempt was asked for by hand (a resend).
    ADD COLUMN manual          boolean NOT NULL DEFAULT false,
    ADD COLUMN updated_at      timestamptz NOT NULL DEFAULT now();
CREATE UNIQUE INDEX deliveries_endpoint_event ON deliveries (endpoint_id, event_id);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE attempts (
    delivery_id   uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    manual        boolean NOT NULL DEFAULT false,
    status_code   integer,
    latency_ms    double precision NOT NULL,
    response_body text,
    error         text,
    PRIMARY KEY (delivery_id, attempt)
);

-- What the experiment events told this service, so a payload carries the experiment record
-- and an endpoint can filter by project (events after the first name only the experiment).
CREATE TABLE experiments (
    id          uuid PRIMARY KEY,
    record      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
