"""An org's secrets as the API takes and shows them (Dreadnode's `UserSecret` shapes), for the
API's routes and the operator's CLI alike: never a value, only the same `masked_value`."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from taskenv.shared.secrets_store import NAME_MAX_CHARS, NAME_PATTERN, VALUE_MAX_BYTES, SecretInfo

MASKED_VALUE = "********"

SecretValue = Annotated[
    str,
    Field(
        min_length=1,
        description=f"At most {VALUE_MAX_BYTES} bytes in UTF-8, no NUL: written, never read back",
        json_schema_extra={"pattern": "^[^\\u0000]*$", "maxLength": VALUE_MAX_BYTES},
    ),
]


class SecretCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(
        max_length=NAME_MAX_CHARS,
        pattern=NAME_PATTERN,
        description="The environment variable commands get it as; unique in the org",
    )
    value: SecretValue


class SecretUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    value: SecretValue


class UserSecret(BaseModel):
    """A secret as answers show it: never its value."""

    id: str
    name: str
    provider: str | None = None
    masked_value: str = MASKED_VALUE
    created_at: str
    updated_at: str


class UserSecretsList(BaseModel):
    secrets: list[UserSecret]
    total: int


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def shown(info: SecretInfo) -> UserSecret:
    return UserSecret(
        id=info.id, name=info.name, created_at=_iso(info.created_at), updated_at=_iso(info.updated_at)
    )
