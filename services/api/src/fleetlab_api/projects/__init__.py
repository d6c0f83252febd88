"""Projects: a name, a typed options schema and a run spec."""
