"""``agssp store``: put local files into the suite's object store and get them back out.

Keys are ``PREFIX`` + the file's path relative to the uploaded folder, so a folder of line
images becomes a prefix that map jobs, dataset imports and pipelines read. Uploads skip keys
that already hold an object of the same size (a cut upload resumes), unless ``--force``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from shared.config import CommonSettings, get_common_settings
from shared.errors import InvalidInputError, SuiteError
from shared.storage.base import ObjectStore, listing_prefix, validate_key

app = typer.Typer(help="Copy files between this machine and the suite's object store.")

_BAD_CHARS = re.compile(r"[^A-Za-z0-9._\-=+]")


@dataclass(frozen=True)
class Transfer:
    """One planned copy: local path <-> store key."""

    path: Path
    key: str


def describe_store(settings: CommonSettings) -> str:
    """One line naming the store the CLI uses (never credentials)."""
    if settings.storage_backend() == "s3":
        return f"store: s3 {settings.s3.endpoint_url} bucket {settings.s3.bucket}"
    return f"store: folder {settings.storage_root()}"


def sanitize_segment(segment: str) -> str:
    """A path segment with every character a key may not hold replaced by ``_``."""
    cleaned = _BAD_CHARS.sub("_", segment).strip(".") or "_"
    return cleaned


def plan_upload(source: Path, prefix: str, rename: bool = False) -> list[Transfer]:
    """Transfers for a file or every file under a folder (hidden files left out).

    Raises:
        InvalidInputError: nothing to upload, or file names that are not valid keys
            (all of them named) when ``rename`` is off.
    """
    prefix = listing_prefix(prefix)
    files = [source] if source.is_file() else sorted(_visible_files(source))
    if not files:
        raise InvalidInputError(f"no files under {source}", code="source_empty")
    base = source.parent if source.is_file() else source
    transfers, bad = [], []
    for path in files:
        parts = path.relative_to(base).parts
        if rename:
            parts = tuple(sanitize_segment(p) for p in parts)
        key = prefix + "/".join(parts)
        try:
            transfers.append(Transfer(path, validate_key(key)))
        except InvalidInputError:
            bad.append(str(path))
    if bad:
        raise InvalidInputError(
            f"{len(bad)} file names are not valid store keys (letters, digits and . _ - = +), "
            f"e.g. {bad[:3]}; pass --rename to replace the other characters with '_'",
            code="invalid_key",
        )
    return transfers


def _visible_files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield path


def plan_download(store: ObjectStore, source: str, dest: Path) -> list[Transfer]:
    """One key into ``dest`` (a file name or a folder), or a prefix's keys under ``dest``.

    Raises:
        InvalidInputError: nothing stored at ``source`` (code source_empty).
    """
    if not source.endswith("/") and store.exists(source):
        target = dest / PurePosixPath(source).name if dest.is_dir() else dest
        return [Transfer(target, source)]
    prefix = listing_prefix(source.rstrip("/") + "/")
    keys = store.list(prefix)
    if not keys:
        raise InvalidInputError(f"nothing is stored at {source!r}", code="source_empty")
    return [Transfer(dest / key[len(prefix) :], key) for key in keys]


def upload(store: ObjectStore, transfers: Iterable[Transfer], force: bool, threads: int) -> int:
    """Copy files to the store in parallel; returns how many were written."""

    def one(t: Transfer) -> bool:
        if not force and store.exists(t.key) and store.size(t.key) == t.path.stat().st_size:
            return False
        store.put_file(t.key, t.path)
        return True

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(one, transfers))


def download(store: ObjectStore, transfers: Iterable[Transfer], threads: int) -> int:
    """Copy objects to local files in parallel; returns how many were written."""

    def one(t: Transfer) -> bool:
        t.path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(t.key, t.path)
        return True

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(one, transfers))


def _store() -> tuple[CommonSettings, ObjectStore]:
    from shared.storage.factory import create_store

    settings = get_common_settings()
    typer.echo(describe_store(settings), err=True)
    return settings, create_store(settings)


def _fail(exc: SuiteError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command("put")
def put(
    local: Annotated[Path, typer.Argument(help="a file or a folder", exists=True)],
    prefix: Annotated[str, typer.Argument(help="store prefix, e.g. lines/line-3/")],
    force: Annotated[bool, typer.Option(help="rewrite keys that already hold an object")] = False,
    rename: Annotated[bool, typer.Option(help="replace characters keys cannot hold")] = False,
    threads: int = 8,
) -> None:
    """Upload LOCAL under PREFIX (folders recursively, relative paths kept)."""
    _, store = _store()
    try:
        transfers = plan_upload(local, prefix, rename)
        written = upload(store, transfers, force, threads)
    except SuiteError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{written} written, {len(transfers) - written} already there, under {prefix}")


@app.command("get")
def get(
    source: Annotated[str, typer.Argument(help="a key, or a prefix ending in '/'")],
    local: Annotated[Path, typer.Argument(help="destination file or folder")],
    threads: int = 8,
) -> None:
    """Download a key or every key under a prefix."""
    _, store = _store()
    try:
        written = download(store, plan_download(store, source, local), threads)
    except SuiteError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{written} files written under {local}")


@app.command("ls")
def ls(prefix: Annotated[str, typer.Argument(help="store prefix")] = "") -> None:
    """List the keys under PREFIX with their sizes."""
    _, store = _store()
    try:
        keys = store.list(listing_prefix(prefix) if prefix else "")
    except SuiteError as exc:
        raise _fail(exc) from exc
    for key in keys:
        typer.echo(f"{store.size(key):>12d}  {key}")
