"""Artifact pointers and manifests: ``ArtifactRef(name, version)`` and its object-key helpers.

Artifacts live under ``models/<name>/<version>/``; see ``shared.storage.artifacts``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MODELS_PREFIX = "models/"
MANIFEST_NAME = "manifest.json"
LATEST_NAME = "LATEST"
STAGES_DIR = "stages"
# Names and versions are single key segments; they never collide with LATEST or stages/.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+\-]{0,127}$")
_RESERVED = frozenset({LATEST_NAME, STAGES_DIR})


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it is a valid artifact name, version or stage, else raise ``ValueError``.

    Args:
        value: the candidate.
        what: "name", "version" or "stage", used in the message.
    """
    if not _NAME.match(value) or value in _RESERVED:
        raise ValueError(
            f"artifact {what} {value!r} is invalid: use 1-128 letters, digits and . _ - = +, "
            f"starting with a letter or digit, not {sorted(_RESERVED)}"
        )
    return value


def new_version(seed: str | None = None, *, at: datetime | None = None) -> str:
    """A sortable version string such as ``20260101T120000Z-1a2b3c4d``.

    Args:
        seed: makes the 8-hex suffix deterministic (e.g. a job id); random when None.
        at: the timestamp (naive values are taken as UTC); now when None. A redelivered
            job gets the same version only when it passes the same ``seed`` *and* ``at``
            (e.g. the job's ``created_at``).
    """
    moment = at or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    digest = uuid.uuid4().hex if seed is None else hashlib.sha256(seed.encode()).hexdigest()
    return f"{stamp}-{digest[:8]}"


class ArtifactRef(BaseModel):
    """Points at one published version of a named artifact (e.g. a model's weights)."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(description="Artifact name, e.g. 'agbp-yolov8s'.")
    version: str = Field(description="Version, e.g. '20260101T120000Z-1a2b3c4d'.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_segment(value, "name")

    @field_validator("version")
    @classmethod
    def _valid_version(cls, value: str) -> str:
        return check_segment(value, "version")

    @property
    def prefix(self) -> str:
        """Key prefix of this version's files, ending with '/'."""
        return f"{model_prefix(self.name)}{self.version}/"

    def key(self, filename: str) -> str:
        """Object key of one file of this version (``filename`` may contain '/')."""
        return f"{self.prefix}{filename}"

    @property
    def manifest_key(self) -> str:
        """Object key of this version's manifest."""
        return self.key(MANIFEST_NAME)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


def model_prefix(name: str) -> str:
    """Key prefix of every version of ``name``, ending with '/'."""
    return f"{MODELS_PREFIX}{check_segment(name, 'name')}/"


class ArtifactFile(BaseModel):
    """One file of a published version."""

    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the content.")


class ArtifactManifest(BaseModel):
    """``manifest.json`` of a version; written after every file and before LATEST moves."""

    name: str
    version: str
    created_at: datetime
    files: dict[str, ArtifactFile]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> ArtifactRef:
        """The reference this manifest describes."""
        return ArtifactRef(name=self.name, version=self.version)

    def hashes(self) -> dict[str, str]:
        """File name -> SHA-256, the identity of a version's content."""
        return {filename: entry.sha256 for filename, entry in self.files.items()}
