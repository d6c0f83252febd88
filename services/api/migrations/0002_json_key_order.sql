-- jsonb stores an object's keys in an order of its own (shorter keys first), not the order
-- they were given in. A project's options are listed, and passed on the command line, in the
-- order of its schema (FGLab and FGMachine keep it), so keep the JSON text as written.
ALTER TABLE projects ALTER COLUMN schema TYPE json USING schema::json;
ALTER TABLE experiments ALTER COLUMN options TYPE json USING options::json;
