"""Categories as versioned resources: ``categories/<name>/<version>/`` holds ``category.json``,
``refs/`` and ``banks/`` (memory banks built on demand); ``categories/<name>/LATEST`` is
written last, so readers never see a half-written version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from services.anomaly_map.ml.clip.prompts import CategoryDescription, parse_category
from services.anomaly_map.params import Method
from shared.errors import InvalidInputError, NotFoundError
from shared.schemas.artifacts import new_version
from shared.schemas.jobs import utcnow
from shared.storage.base import ObjectNotFoundError, ObjectStore, validate_key

CATEGORIES_PREFIX = "categories/"
LATEST = "LATEST"
RECORD_NAME = "category.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IMAGE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif"}


class CategorySpec(BaseModel):
    """What a caller defines for a category (agssp-spec §2, flattened)."""

    model_config = ConfigDict(extra="forbid")

    map: str = Field(description="object phrase put into every '{}' slot")
    good: list[str] = Field(default_factory=list, description="extra normal states, one '{}'")
    defect: list[str] = Field(default_factory=list, description="extra anomalous states")
    references: list[str] = Field(
        default_factory=list, description="object-store keys of normal reference images"
    )
    method: Method = Field("kead", description="default scoring method of the category")


class CategoryRecord(BaseModel):
    """One stored version of a category (``category.json``)."""

    name: str
    version: str
    created_at: datetime = Field(default_factory=utcnow)
    map: str
    good: list[str]
    defect: list[str]
    method: Method
    references: list[str] = Field(description="keys of the copied reference images")
    sources: list[str] = Field(default_factory=list, description="where the references came from")
    fingerprint: str = Field(description="hash of the prompt-relevant fields")

    @property
    def prefix(self) -> str:
        return f"{CATEGORIES_PREFIX}{self.name}/{self.version}/"

    def description(self) -> CategoryDescription:
        return CategoryDescription(
            name=self.name,
            object_phrase=self.map,
            good=tuple(self.good),
            defect=tuple(self.defect),
            samples=tuple(self.references),
        )


@dataclass(frozen=True)
class ReferenceImage:
    """A reference image to store: encoded bytes, the decoded format and where it came from."""

    data: bytes
    format: str
    source: str


def check_name(name: str) -> str:
    """Return ``name`` when it is a valid category name, else raise ``InvalidInputError``."""
    if not _NAME.match(name) or name == LATEST:
        raise InvalidInputError(
            f"category name {name!r} is invalid: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="invalid_category_name",
        )
    return name


def describe(name: str, spec: CategorySpec) -> CategoryDescription:
    """Validate the prompt fields of ``spec`` as the description schema does (one '{}' each)."""
    raw = {"des": {"good": spec.good, "defect": spec.defect}, "map": spec.map}
    return parse_category(name, raw)


class CategoryStore:
    """Reads and writes category versions in an ``ObjectStore``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _latest_key(name: str) -> str:
        return f"{CATEGORIES_PREFIX}{check_name(name)}/{LATEST}"

    def create(
        self, name: str, spec: CategorySpec, references: Sequence[ReferenceImage]
    ) -> CategoryRecord:
        """Write a new version: reference images, then ``category.json``, then ``LATEST``."""
        description = describe(check_name(name), spec)
        version = new_version()
        prefix = f"{CATEGORIES_PREFIX}{name}/{version}/"
        keys = []
        for i, ref in enumerate(references):
            key = f"{prefix}refs/{i:02d}.{_IMAGE_EXTENSIONS.get(ref.format, 'img')}"
            self.store.put_bytes(key, ref.data)
            keys.append(key)
        record = CategoryRecord(
            name=name,
            version=version,
            map=spec.map,
            good=list(spec.good),
            defect=list(spec.defect),
            method=spec.method,
            references=keys,
            sources=[ref.source for ref in references],
            fingerprint=description.fingerprint(),
        )
        self.store.put_bytes(
            f"{prefix}{RECORD_NAME}",
            record.model_dump_json(indent=1).encode(),
            content_type="application/json",
        )
        self.store.put_bytes(self._latest_key(name), version.encode(), content_type="text/plain")
        return record

    def latest_version(self, name: str) -> str | None:
        try:
            return self.store.get_bytes(self._latest_key(name)).decode().strip()
        except ObjectNotFoundError:
            return None

    def get(self, name: str, version: str | None = None) -> CategoryRecord:
        """The given version, or the latest. Raises ``NotFoundError`` (category_not_found)."""
        version = version or self.latest_version(name)
        if version is None:
            raise NotFoundError(f"category {name!r} not found", code="category_not_found")
        key = f"{CATEGORIES_PREFIX}{name}/{version}/{RECORD_NAME}"
        try:
            validate_key(key)
            raw = self.store.get_bytes(key)
        except (ObjectNotFoundError, InvalidInputError) as exc:
            raise NotFoundError(
                f"category {name!r} has no version {version!r}", code="category_not_found"
            ) from exc
        return CategoryRecord.model_validate_json(raw)

    def versions(self, name: str) -> list[str]:
        """Complete versions of ``name``, oldest first."""
        prefix = f"{CATEGORIES_PREFIX}{check_name(name)}/"
        found = []
        for key in self.store.list(prefix):
            version, _, rest = key[len(prefix) :].partition("/")
            if rest == RECORD_NAME:
                found.append(version)
        return sorted(found)

    def names(self) -> list[str]:
        """Names of categories that have a ``LATEST`` pointer, sorted."""
        names = set()
        for key in self.store.list(CATEGORIES_PREFIX):
            parts = key[len(CATEGORIES_PREFIX) :].split("/")
            if len(parts) == 2 and parts[1] == LATEST:
                names.add(parts[0])
        return sorted(names)

    def delete(self, name: str) -> int:
        """Remove every version of ``name``; returns the number of objects removed."""
        if self.latest_version(name) is None:
            raise NotFoundError(f"category {name!r} not found", code="category_not_found")
        # LATEST first: a concurrent reader then sees "not found", never a dangling pointer.
        self.store.delete(self._latest_key(name))
        return 1 + self.store.delete_prefix(f"{CATEGORIES_PREFIX}{name}/")

    def reference_bytes(self, record: CategoryRecord) -> list[bytes]:
        return [self.store.get_bytes(key) for key in record.references]

    def get_blob(self, record: CategoryRecord, relative: str) -> bytes | None:
        try:
            return self.store.get_bytes(f"{record.prefix}{relative}")
        except ObjectNotFoundError:
            return None

    def put_blob(self, record: CategoryRecord, relative: str, data: bytes) -> str:
        key = validate_key(f"{record.prefix}{relative}")
        self.store.put_bytes(key, data)
        return key
