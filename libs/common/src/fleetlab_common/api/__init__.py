"""The REST API's records and request bodies as pydantic models: the API validates and answers
with them, and the Python SDK (``fleetlab_cli.Client``) returns them, so both sides read the
same types. Pure pydantic: importing them needs no web framework and no database driver."""
