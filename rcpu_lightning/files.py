"""Writing outputs safely: one rule for what may be replaced, one atomic writer for files and folders.

The rule (README "Outputs"): an output location that already exists and is not empty is never
replaced unless the caller passes ``overwrite=True``, and even then a folder is replaced only when
this tool wrote it: it holds one of :data:`OUTPUT_MARKERS` (every folder output does) and nothing
but :data:`OWN_FILES`. A folder with anything else in it (a user's notes, a subfolder) is refused
with or without the flag, naming a few of those files (:func:`foreign_files`). What this package
wrote itself gets no other exception. :func:`check_output_path` applies the rule *before* any work
starts (it also proves the location is writable without leaving anything behind); the writers apply
it again at the end.

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
from fnmatch import fnmatchcase
from itertools import islice
from pathlib import Path
from typing import Any

__all__ = [
    "OUTPUT_MARKERS",
    "OUTPUT_PATH_FIELDS",
    "OWN_FILES",
    "OutputExistsError",
    "PLAN_FILE",
    "RANDOM_CHECKPOINT_FILE",
    "REPORT_FILE",
    "atomic_dir",
    "check_output_path",
    "foreign_files",
    "format_output_path",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

#: Placeholders an output path template may use (``outputs/{method}-{ratio_pct}``).
OUTPUT_PATH_FIELDS = ("method", "compensation", "structure", "targets", "ratio", "ratio_pct", "nsamples", "stage")


PLAN_FILE = "pruning_plan.json"  # the pruning plan of a pruned model folder
REPORT_FILE = "pruning_report.json"  # what the pruning did, and which weights the folder holds
RANDOM_CHECKPOINT_FILE = "random_checkpoint.json"  # a random-weight checkpoint of benchmarks/random_checkpoint.py
#: A folder holding one of these files was written by this tool (every folder output holds at least one).
OUTPUT_MARKERS = (PLAN_FILE, REPORT_FILE, RANDOM_CHECKPOINT_FILE)
#: What this tool writes into an output folder (name patterns): its own files, and the Hugging Face
#: model, config and tokenizer files that ``save_pretrained`` writes.
OWN_FILES = (*OUTPUT_MARKERS, "config.json", "generation_config.json",
             "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
             "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json",
             "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
             "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
             "modeling_pruned.py")  # export.remote_code's modeling file (folders of per-layer shapes)
_NAMED = 3  # foreign files named in a refusal


class OutputExistsError(FileExistsError):
    """An output location exists (and is not empty) and replacing it was not asked for, or it is a
    folder holding files this tool did not write."""


def format_output_path(template: str, fields: dict[str, Any]) -> str:
    """Fill the placeholders of :data:`OUTPUT_PATH_FIELDS` in an output path (``{ratio_pct}``: ``ratio``
    in percent, e.g. 20); any other placeholder is an error."""
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


def _foreign(folder: Path) -> Iterator[str]:
    """The files (relative paths) in ``folder`` that this tool did not write: all of them when it holds
    no :data:`OUTPUT_MARKERS`, else those matching no :data:`OWN_FILES` (a subfolder's contents too)."""
    entries = sorted(folder.iterdir())
    ours = any(e.name in OUTPUT_MARKERS and e.is_file() and not e.is_symlink() for e in entries)
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():  # lazily: a refusal names only a few
            empty = True
            for p in entry.rglob("*"):
                if not p.is_dir() or p.is_symlink():
                    empty = False
                    yield str(p.relative_to(folder))
            if empty:
                yield entry.name + "/"
        elif not ours or entry.is_symlink() or not any(fnmatchcase(entry.name, p) for p in OWN_FILES):
            yield entry.name


def foreign_files(path: str | os.PathLike, limit: int = _NAMED + 1) -> list[str]:
    """Up to ``limit`` files in the folder ``path`` that this tool did not write ([]: ``overwrite``
    may replace it; also for a path that is not a folder)."""
    path = Path(path).expanduser()
    if not path.is_dir() or path.is_symlink():
        return []
    return list(islice(_foreign(path), limit))


def _refuse(path: Path, what: str, flag: str) -> None:
    kind = "folder" if path.is_dir() else "file"
    raise OutputExistsError(
        f"{what} {str(path)!r} already exists and is a non-empty {kind}; nothing was changed. "
        f"Choose another path or pass {flag} to replace it"
    )


def _refuse_unless_replaceable(path: Path, overwrite: bool, what: str, flag: str) -> None:
    """The rule (module docstring), for a location about to be written."""
    if not _occupied(path):
        return
    if not overwrite:
        _refuse(path, what, flag)
    foreign = foreign_files(path)
    if foreign:
        named = ", ".join(foreign[:_NAMED]) + (", ..." if len(foreign) > _NAMED else "")
        raise OutputExistsError(
            f"{what} {str(path)!r} holds files this tool did not write ({named}); nothing was changed. "
            f"{flag} replaces only a folder this tool wrote: move those files away or choose another path")


def check_output_path(path: str | os.PathLike, overwrite: bool, what: str = "output",
                      flag: str = "overwrite=True") -> Path:
    """Refuse ``path`` now if a later write would fail or replace something the caller did not ask to.

    * an existing non-empty file/folder without ``overwrite`` -> :class:`OutputExistsError`;
    * a location that cannot be written -> ``PermissionError``/``OSError`` naming it. Writability is
      proven by creating and removing a probe in the nearest existing ancestor; folders that do not
      exist yet are not created here.
    """
    path = Path(path).expanduser()
    _refuse_unless_replaceable(path, overwrite, what, flag)
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
        _refuse_unless_replaceable(path, overwrite, what, flag)
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
    _refuse_unless_replaceable(path, overwrite, what, flag)
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
