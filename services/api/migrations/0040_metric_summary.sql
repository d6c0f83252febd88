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

-- Each experiment's scores (results._scores), one row per name, kept by a trigger from
-- whatever writes results: sorting by results._scores.<name> walks (name, value) in order
-- instead of reading the JSON of every experiment. A JSON null counts as no score.
CREATE TABLE result_scores (
    experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    name          text NOT NULL,
    value         jsonb NOT NULL,
    PRIMARY KEY (experiment_id, name)
);
CREATE INDEX result_scores_by_value ON result_scores (name, value, experiment_id);

CREATE FUNCTION result_scores_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.results -> '_scores' IS NOT DISTINCT FROM NEW.results -> '_scores' THEN
        RETURN NULL;
    END IF;
    DELETE FROM result_scores WHERE experiment_id = NEW.id;
    IF jsonb_typeof(NEW.results -> '_scores') = 'object' THEN
        INSERT INTO result_scores (experiment_id, name, value)
        SELECT NEW.id, s.key, s.value FROM jsonb_each(NEW.results -> '_scores') AS s
        WHERE jsonb_typeof(s.value) <> 'null';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER result_scores_sync AFTER INSERT OR UPDATE OF results ON experiments
    FOR EACH ROW EXECUTE FUNCTION result_scores_sync();

INSERT INTO result_scores (experiment_id, name, value)
SELECT e.id, s.key, s.value FROM experiments e, jsonb_each(e.results -> '_scores') AS s
WHERE jsonb_typeof(e.results -> '_scores') = 'object' AND jsonb_typeof(s.value) <> 'null';
