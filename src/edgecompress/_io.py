"""File helpers: atomic writes that never destroy what was there, checksums, free space.

:func:`atomic_path` is how everything in edgecompress writes a file or folder: the new one is
written complete in a hidden temporary folder beside the destination and moved into place only
when the whole block succeeded. An existing destination is replaced only with
``overwrite=True``, a folder only by a folder and a file only by a file, and an old folder is
deleted only after the new one is in place. Exceptions (also ``KeyboardInterrupt``) leave the
destination exactly as it was and no temporary behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, WriteError

_TMP_SUFFIX = ".ec-tmp"


def describe_os_error(exc: OSError, path: str | os.PathLike[str]) -> str:
    """``exc`` as a sentence naming the path, the cause and what to do."""
    where = Path(path)
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        free = free_bytes(where)
        return (f"no space left on the device holding {where} ({free:,} bytes free): free some "
                f"space or write somewhere else. Nothing was written to {where}")
    if code == errno.EROFS:
        return (f"{where} is on a read-only file system: write somewhere else. Nothing was "
                f"written to {where}")
    if code in (errno.EACCES, errno.EPERM):
        return (f"no permission to write {where}: choose a folder you can write to. Nothing was "
                f"written to {where}")
    return f"writing {where} failed: {exc.strerror or exc}. Nothing was written to {where}"


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return 0


def ensure_free_space(path: str | os.PathLike[str], needed: int, what: str) -> None:
    """Raise WriteError before a writer that cannot fail cleanly (native converters) starts."""
    free = free_bytes(path)
    if free < needed:
        raise WriteError(f"{what} needs about {needed:,} bytes of free space "
                         f"beside {path}, but only {free:,} are free: free some space or write "
                         f"somewhere else. Nothing was written to {path}", errno.ENOSPC)


@contextlib.contextmanager
def disk_full_is_clear(path: str | os.PathLike[str], low_water: int = 1 << 20) -> Iterator[None]:
    """Turn any failure of a writer (native converters raise RuntimeError or worse, not OSError)
    into a WriteError naming the path when the disk is (nearly) full afterwards."""
    try:
        yield
    except WriteError:
        raise
    except Exception as exc:
        free = free_bytes(path)
        if free >= low_water:
            raise
        raise WriteError(f"writing {path} failed with only {free:,} bytes left on its device "
                         f"(disk full?): free some space or write somewhere else. Nothing was "
                         f"written to {path}. The writer said: {str(exc)[:300]}",
                         errno.ENOSPC) from exc


def refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; edgecompress does not write through or "
                          f"replace links. Give the real path ({os.path.realpath(path)}) or "
                          f"remove the link")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success.

    Works for files and folders. Files written beside the temporary whose names extend
    ``path``'s (``model.tflite.json`` for ``model.tflite``) move with it. An existing
    destination raises unless ``overwrite``; even then a folder is only replaced by a folder,
    a file by a file, never through a symbolic link, and an old folder is removed only after
    the new one is in place.
    """
    final = Path(path)
    refuse_symlink(final)
    if final.exists() and not overwrite:
        raise ConfigError(f"{final} already exists; pass overwrite=True to replace it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=_TMP_SUFFIX,
                                        dir=final.parent))
    except OSError as exc:
        raise WriteError(describe_os_error(exc, final), exc.errno) from exc
    tmp = tmp_dir / final.name
    try:
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to the temporary path {tmp}")
            _publish(tmp_dir, final, overwrite)
        except OSError as exc:
            if isinstance(exc, WriteError) or exc.errno is None:
                raise
            raise WriteError(describe_os_error(exc, final), exc.errno) from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _publish(tmp_dir: Path, final: Path, overwrite: bool) -> None:
    """Move the temporary and its companions onto their destinations (all checked first)."""
    main = tmp_dir / final.name
    companions = sorted(p for p in tmp_dir.iterdir()
                        if p.name.startswith(final.name + ".") and not p.name.startswith(".old"))
    moves = [(src, final.parent / src.name) for src in (*companions, main)]
    for src, dest in moves:
        refuse_symlink(dest)
        if dest.exists() and not overwrite:
            raise ConfigError(f"{dest} already exists; pass overwrite=True to replace it")
        if dest.exists() and src.is_dir() != dest.is_dir():
            kind = "folder" if dest.is_dir() else "file"
            raise ConfigError(f"{dest} is a {kind}; edgecompress never replaces a {kind} by a "
                              f"{'file' if kind == 'folder' else 'folder'}. Choose another path")
    for src, dest in moves:
        _replace(src, dest, tmp_dir)


def _replace(src: Path, dest: Path, tmp_dir: Path) -> None:
    if not dest.is_dir():
        os.replace(src, dest)  # atomic for files; a missing dest is a plain rename
        return
    # a folder cannot be swapped in one call: move the old one into the temporary folder (it
    # is deleted with it, after the new one is in place), and put it back if the move fails
    old = tmp_dir / f".old-{dest.name}"
    os.rename(dest, old)
    try:
        os.rename(src, dest)
    except BaseException:
        os.rename(old, dest)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to the file ``path`` atomically (replacing a file, never a folder)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_size(path: str | os.PathLike[str]) -> int:
    """Size on disk in bytes of a file, or of every file below a directory."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size
