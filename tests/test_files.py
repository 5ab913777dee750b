"""rcpu_lightning.files: nothing of the user's is replaced unasked, writes are atomic, modes follow the umask."""

from __future__ import annotations

import os
import re

import pytest

from rcpu_lightning.files import (
    OutputExistsError,
    atomic_dir,
    check_output_path,
    foreign_files,
    format_output_path,
    write_json_atomic,
    write_text_atomic,
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_users_non_empty_folder_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match=r"already exists and is a non-empty folder.*--flag"):
        check_output_path(target, overwrite=False, what="save_dir", flag="--flag")
    with pytest.raises(OutputExistsError):
        with atomic_dir(target) as staged:
            (staged / "model.bin").write_text("new")
    assert _names(target) == ["notes.txt"] and (target / "notes.txt").read_text() == "precious"
    assert _names(tmp_path) == ["mine"]  # no staging folder left behind


def test_overwrite_replaces_a_folder_this_tool_wrote_as_a_whole_atomically(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for name in ("pruning_plan.json", "config.json", "model-00001-of-00002.safetensors", "tokenizer.json"):
        (target / name).write_text("old")
    with atomic_dir(target, overwrite=True) as staged:
        (staged / "new.txt").write_text("new")
        assert len(_names(target)) == 4  # readers see the old output until the end
    assert _names(target) == ["new.txt"] and _names(tmp_path) == ["out"]


@pytest.mark.parametrize("marker", [None, "pruning_plan.json", "pruning_report.json", "random_checkpoint.json"])
def test_overwrite_never_replaces_a_folder_holding_files_this_tool_did_not_write(tmp_path, marker):
    # issue #23: a save_dir holding mine.txt and sub/keep.txt was replaced as a whole with the flag
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "mine.txt").write_text("mine")
    (target / "sub" / "keep.txt").write_text("keep")
    (target / "config.json").write_text("{}")
    if marker:
        (target / marker).write_text("{}")
    want = ["mine.txt", "sub/keep.txt"] if marker else ["config.json", "mine.txt", "sub/keep.txt"]
    assert foreign_files(target) == want
    pattern = r"holds files this tool did not write \(" + re.escape(", ".join(want)) + r"\).*--flag replaces only"
    with pytest.raises(OutputExistsError, match=pattern):
        check_output_path(target, overwrite=True, what="save_dir", flag="--flag")
    with pytest.raises(OutputExistsError, match=pattern):
        with atomic_dir(target, overwrite=True, flag="--flag") as staged:
            (staged / "config.json").write_text("new")
    assert (target / "mine.txt").read_text() == "mine" and (target / "sub" / "keep.txt").read_text() == "keep"
    assert (target / "config.json").read_text() == "{}" and _names(tmp_path) == ["out"]  # no staging left


def test_a_foreign_file_added_while_the_work_ran_is_still_refused_at_the_end(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "pruning_report.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"\(a.txt, b.txt, c.txt, \.\.\.\)"):
        with atomic_dir(target, overwrite=True) as staged:
            (staged / "config.json").write_text("new")
            for name in "abcd":
                (target / f"{name}.txt").write_text(name)
    assert _names(target) == ["a.txt", "b.txt", "c.txt", "d.txt", "pruning_report.json"]


def test_a_failure_leaves_neither_half_output_nor_staging(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "out") as staged:
            (staged / "part.bin").write_text("half")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_an_empty_folder_made_in_advance_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    check_output_path(tmp_path / "out", overwrite=False)
    with atomic_dir(tmp_path / "out") as staged:
        (staged / "a.txt").write_text("a")
    assert _names(tmp_path / "out") == ["a.txt"]


def test_outputs_get_the_users_umask_modes(tmp_path):
    with atomic_dir(tmp_path / "ckpt") as staged:
        (staged / "weights.bin").write_bytes(b"x")
    write_json_atomic(tmp_path / "results.json", {"ppl": 1.0})
    mask = _umask()
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o777 & ~mask  # not 0700 (mkdtemp)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o666 & ~mask  # not 0600 (mkstemp)


def test_files_are_replaced_only_when_allowed(tmp_path):
    path = tmp_path / "r.json"
    write_text_atomic(path, "one")
    with pytest.raises(OutputExistsError):
        write_text_atomic(path, "two", overwrite=False)
    assert path.read_text() == "one"
    write_text_atomic(path, "three")
    assert path.read_text() == "three" and _names(tmp_path) == ["r.json"]


def test_unwritable_locations_fail_up_front_without_leaving_anything(tmp_path):
    with pytest.raises(PermissionError, match=r"cannot be written"):
        check_output_path("/proc/x/pruned", overwrite=False, what="save_dir")
    if os.geteuid() != 0:  # root writes anywhere; /proc refuses everyone
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError):
            check_output_path(locked / "new" / "deeper", overwrite=False)
    check_output_path(tmp_path / "a" / "b" / "c", overwrite=False)
    assert _names(tmp_path) == (["locked"] if os.geteuid() != 0 else [])  # the probe created no folder


def test_path_templates():
    fields = {"method": "rcpu", "compensation": "rotation", "ratio": 0.2}
    assert format_output_path("o/{method}-{compensation}-{ratio_pct}.{stage}.json", {**fields, "stage": "prune"}) \
        == "o/rcpu-rotation-20.prune.json"
    with pytest.raises(ValueError, match=r"unknown placeholder 'metod'.*allowed"):
        format_output_path("o/{metod}", fields)
