-- Options are passed on the command line in the order the project's schema gives them;
-- jsonb would re-sort their keys, json keeps the text as written.
ALTER TABLE experiments ALTER COLUMN options TYPE json USING options::json;
