"""Writing outputs safely: one rule for what may be replaced, one atomic writer for files and folders.

The rule (README "Outputs"): an output location that already exists and is not empty is never
replaced unless the caller passes ``overwrite=True``. What this package wrote itself gets no
exception. :func:`check_output_path` applies the rule *before* any work starts (it also proves the
location is writable without leaving anything behind); the writers apply it again at the end.

Writers stage everything in a hidden sibling (``.<name>.tmp-<random>``) and rename it into place,
so a reader sees the old output or the complete new one, never half of it; a failure removes the
staging copy. Outputs get the user's normal permissions (the umask), whatever created them: staged
files and folders are made with ``open``/``mkdir`` (not ``mkstemp``/``mkdtemp``, which force
0600/0700), and a staged folder's contents get the umask's modes before it is renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "OUTPUT_PATH_FIELDS",
    "OutputExistsError",
    "atomic_dir",
    "check_output_path",
    "format_output_path",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

#: Placeholders an output path template may use (``outputs/{method}-{ratio_pct}``).
OUTPUT_PATH_FIELDS = ("method", "compensation", "structure", "targets", "ratio", "ratio_pct", "nsamples", "stage")


class OutputExistsError(FileExistsError):
    """An output location exists (and is not empty) and replacing it was not asked for."""


def format_output_path(template: str, fields: dict[str, Any]) -> str:
    """Fill ``{method}``, ``{compensation}``, ``{structure}``, ``{targets}``, ``{ratio}``, ``{ratio_pct}``
    (e.g. 20), ``{nsamples}``, ``{stage}`` in an output path; any other placeholder is an error."""
    if "{" not in template:
        return template
    values = {k: fields.get(k) for k in OUTPUT_PATH_FIELDS}
    if values.get("ratio") is not None:
        values["ratio_pct"] = int(round(100 * float(values["ratio"])))
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"output path {template!r}: unknown placeholder {exc}; allowed: {list(OUTPUT_PATH_FIELDS)}"
        ) from None


def _occupied(path: Path) -> bool:
    """Whether ``path`` holds something a writer would replace (an empty folder does not count)."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return path.exists() or path.is_symlink()


def _refuse(path: Path, what: str, flag: str) -> None:
    kind = "folder" if path.is_dir() else "file"
    raise OutputExistsError(
        f"{what} {str(path)!r} already exists and is a non-empty {kind}; nothing was changed. "
        f"Choose another path or pass {flag} to replace it"
    )


def check_output_path(path: str | os.PathLike, overwrite: bool, what: str = "output",
                      flag: str = "overwrite=True") -> Path:
    """Refuse ``path`` now if a later write would fail or replace something the caller did not ask to.

    * an existing non-empty file/folder without ``overwrite`` -> :class:`OutputExistsError`;
    * a location that cannot be written -> ``PermissionError``/``OSError`` naming it. Writability is
      proven by creating and removing a probe in the nearest existing ancestor; folders that do not
      exist yet are not created here.
    """
    path = Path(path).expanduser()
    if _occupied(path) and not overwrite:
        _refuse(path, what, flag)
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r}: {str(parent)!r} is not a folder")
    probe = parent / f".{path.name}.probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise PermissionError(f"{what} {str(path)!r} cannot be written: {_write_refusal(path, parent, exc)}") from None
    return path


def _write_refusal(path: Path, parent: Path, exc: OSError) -> str:
    """Why nothing can be created in ``parent`` (the nearest existing ancestor of ``path``), in words."""
    reason = {errno.EACCES: "no write permission there", errno.EPERM: "no write permission there",
              errno.EROFS: "a read-only file system",
              # mkdir in an existing folder that says ENOENT: a virtual file system such as /proc or /sys
              errno.ENOENT: "its file system accepts no new folders"}.get(exc.errno, "")
    reason = f"{reason} ({exc.strerror})" if reason else str(exc.strerror)
    if parent == path.parent:
        return f"nothing can be created in the folder {str(parent)!r}: {reason}"
    first = path.parent  # the first folder that would have to be created
    while first.parent != parent:
        first = first.parent
    return f"the folder {str(first)!r} cannot be created in {str(parent)!r}: {reason}"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask_modes(root: Path) -> None:
    """Give everything under ``root`` the modes of a plain ``open``/``mkdir`` under the user's umask
    (some writers, e.g. safetensors, create their files 0600)."""
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)


def _staging(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:10]}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _install(staged: Path, path: Path, overwrite: bool, what: str, flag: str) -> None:
    """Rename ``staged`` onto ``path``; an occupied ``path`` is moved aside first (``overwrite`` only)."""
    if _occupied(path):
        if not overwrite:
            _refuse(path, what, flag)
        if not staged.is_dir() and not path.is_dir():
            os.replace(staged, path)  # a file replaces a file in one atomic step
            return
        old = _staging(path, "old")
        os.replace(path, old)
        try:
            os.replace(staged, path)
        except BaseException:
            os.replace(old, path)  # put the previous output back
            raise
        _remove(old)
    else:
        if path.is_dir():
            path.rmdir()  # an empty folder, e.g. created by the user in advance
        os.replace(staged, path)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "output folder",
               flag: str = "overwrite=True") -> Iterator[Path]:
    """Yield an empty staging folder; on normal exit it becomes ``path`` (see the module docstring)."""
    path = Path(path).expanduser()
    if _occupied(path) and not overwrite:
        _refuse(path, what, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _staging(path, "tmp")
    staged.mkdir()
    try:
        yield staged
        _umask_modes(staged)
        _install(staged, path, overwrite, what, flag)
    finally:
        _remove(staged)


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = True,
                 what: str = "output file", flag: str = "overwrite=True") -> Path:
    """Call ``write(staging_path)``, then rename the staged file onto ``path``.

    Unlike folders, files are replaced by default: callers that must not replace a user's file
    check it up front with :func:`check_output_path` (or pass ``overwrite=False``).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = _staging(path, "tmp")
    try:
        write(str(staged))
        _install(staged, path, overwrite, what, flag)
    finally:
        _remove(staged)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, **kwargs: Any) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)

    return write_atomic(path, _write, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2, **kwargs: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n", **kwargs)
