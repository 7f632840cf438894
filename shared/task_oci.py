"""The OCI artifact `dn task push` uploads: media types, the manifest, digests.

A task is one OCI image manifest with a config blob (task.yaml as JSON) and exactly one layer
(the task directory as tar.gz), annotated with its type, name and version.
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.dreadnode.config.v1+json"
MEDIA_LAYER_TAR_GZ = "application/vnd.dreadnode.layer.v1.tar+gzip"
ANNOTATION_TYPE = "io.dreadnode.type"
ANNOTATION_NAME = "io.dreadnode.name"
ANNOTATION_VERSION = "io.dreadnode.version"
# `dn task push` labels tasks "environment" (its builder is shared with environments).
TASK_TYPES = frozenset({"task", "environment"})
MANIFEST_MAX_BYTES = 64 * 1024
SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
LATEST = "latest"


class Descriptor(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str = Field(pattern=SHA256_DIGEST.pattern)
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: Literal["application/vnd.oci.image.manifest.v1+json"] = Field(alias="mediaType")
    config: Descriptor
    layers: list[Descriptor] = Field(min_length=1, max_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)

    @property
    def layer(self) -> Descriptor:
        return self.layers[0]

    def problems(self) -> list[str]:
        """What makes this manifest not a task (beyond its schema)."""
        found = []
        if self.config.media_type != MEDIA_CONFIG:
            found.append(f"config media type must be {MEDIA_CONFIG}")
        if self.layer.media_type != MEDIA_LAYER_TAR_GZ:
            found.append(f"the layer's media type must be {MEDIA_LAYER_TAR_GZ}")
        kind = self.annotations.get(ANNOTATION_TYPE)
        if kind is not None and kind not in TASK_TYPES:
            found.append(f"{ANNOTATION_TYPE} must be one of {sorted(TASK_TYPES)}, not {kind!r}")
        return found
