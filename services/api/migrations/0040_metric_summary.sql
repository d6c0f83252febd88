-- Each metric's last, min and max per experiment, kept from logstream's
-- logstream.metrics.summarized events (one per stored batch, absolute values): what the
-- experiments list sorts and filters on. The points themselves stay in logstream.
CREATE TABLE metric_summary (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    name          text NOT NULL,
    last          double precision NOT NULL,
    last_step     bigint,
    last_ts       timestamptz NOT NULL,
    min           double precision NOT NULL,
    max           double precision NOT NULL,
    count         bigint NOT NULL,
    PRIMARY KEY (experiment_id, name)
);
-- One index per sortable value: a page walks the index in order and joins 50 experiments.
CREATE INDEX metric_summary_by_last ON metric_summary (name, last, experiment_id);
CREATE INDEX metric_summary_by_min ON metric_summary (name, min, experiment_id);
CREATE INDEX metric_summary_by_max ON metric_summary (name, max, experiment_id);
