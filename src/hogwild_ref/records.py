"""What hogwild_ref keeps across processes: the cache root and small JSON records in it (Spec §11.6).

Pure (no torch): the helpers a cache needs, kept apart from what is cached.

* :func:`cache_root` — ``$HOGWILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hogwild_ref``, else
  ``~/.cache/hogwild_ref``: the embedded model's converted weights
  (:func:`hogwild_ref.models.converted_dir`) and the passed compatibility proofs
  (:mod:`hogwild_ref.proof`) live under it;
* :func:`digest` — the sha256 of a canonical JSON form, the name of a record;
* :func:`source_stamp` and :func:`file_stamps` — (path, size, mtime_ns) of the package's own source
  and of a model's weight files, so that a change to either changes a key (with :func:`package_version`);
* :func:`read_record` and :func:`write_record` — a record that cannot be read is None (never an error);
  a record is written atomically (temporary file + ``os.replace``) and a failure to write is reported
  as False, not raised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_root", "digest", "file_stamps", "package_version", "read_record", "source_stamp", "write_record"]


def cache_root() -> Path:
    """``$HOGWILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hogwild_ref``, else ``~/.cache/hogwild_ref`` (read at
    every call). As the XDG base directory specification says, an ``XDG_CACHE_HOME`` that is not an
    absolute path is ignored; an empty ``HOME`` counts as unset (the user's home from the password
    database), so the cache never lands in whatever folder the command was started from."""
    explicit = os.environ.get("HOGWILD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "hogwild_ref"
    return _home() / ".cache" / "hogwild_ref"


def _home() -> Path:
    if os.environ.get("HOME"):
        return Path.home()
    import pwd

    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:  # a user the password database does not know (a container's arbitrary uid)
        raise RuntimeError("no home folder for the cache: HOME is empty or unset and the password database has no "
                           "entry for this user; set HOGWILD_CACHE_DIR (or HOME)") from None


def digest(fields: Any) -> str:
    """The sha256 (hex) of ``fields`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_stamps(directory: Path, patterns: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the files of ``directory`` matching any of ``patterns``, sorted by name."""
    files = {p for pattern in patterns for p in directory.glob(pattern) if p.is_file()}
    stamps = []
    for path in sorted(files):
        st = path.stat()
        stamps.append((path.relative_to(directory).as_posix(), st.st_size, st.st_mtime_ns))
    return stamps


@functools.cache
def package_version() -> str:
    """The installed hogwild_ref distribution's version ("unknown" when run from a source tree that is not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("hogwild_ref")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def source_stamp() -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime_ns) of every ``.py`` file of the installed hogwild_ref, once per
    process: an editable install changes the code without changing the version."""
    return tuple(file_stamps(Path(__file__).resolve().parent, ("**/*.py",)))


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``; None when it is missing, unreadable or not a JSON object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> bool:
    """Write ``record`` as JSON to ``path`` atomically (a temporary file in the same folder, renamed
    into place: a reader sees the old record or the new one, never a part). False when it could not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except (OSError, TypeError, ValueError):
        return False
    return True
