"""Token schemas."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleetlab_common.api.projects import NAME_PATTERN


class TokenCreate(BaseModel):
    """``POST /api/v1/tokens``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "ci"}]})

    name: str = Field(pattern=NAME_PATTERN, description="Unique; what the token is for.")


class Token(BaseModel):
    """A token as listed: never its secret."""

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The secret's first characters, to tell tokens apart")
    created_at: datetime
    last_used_at: datetime | None


class TokenCreated(Token):
    """The new token, with its secret: shown this once."""

    token: str
