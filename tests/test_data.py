"""WikiText-2 rows, calibration windows and perplexity windows (local files)."""

from __future__ import annotations

import logging

import pytest
import torch

from rcpu_lightning.data import (
    CalibrationConfig,
    calibration_split,
    calibration_stream,
    calibration_windows,
    heldout_windows,
    window_starts,
    find_split_file,
    load_rows,
    perplexity_windows,
    read_rows,
)


class CharTokenizer:
    """One token per character: makes window counts easy to compute by hand."""

    def __call__(self, text, return_tensors=None):
        ids = torch.tensor([[ord(c) % 256 for c in text]])

        class Out:
            input_ids = ids

        return Out()


def _write(folder, name, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(lines), encoding="utf-8")


def test_rows_match_the_datasets_layout(shared_data):
    rows = load_rows("test", shared_data)
    assert len(rows) == 4358  # load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    assert rows[:3] == ["", " = Robert Boulter = \n", ""]
    assert all(r == "" or r.endswith("\n") for r in rows)


def test_shared_layout_prefers_raw_and_falls_back_to_valid(shared_data, caplog, monkeypatch):
    from rcpu_lightning.data import wikitext

    assert find_split_file(shared_data, "test").name == "wiki.test.raw"
    assert find_split_file(shared_data, "train") is None
    monkeypatch.setattr(wikitext, "_WARNED_VALID", set())  # warned once per process: another test may have been first
    with caplog.at_level(logging.WARNING):
        assert calibration_split(shared_data) == "valid"
    assert "valid split instead" in caplog.text


def test_perplexity_windows_are_non_overlapping_and_drop_the_tail(tmp_path):
    _write(tmp_path, "wiki.test.raw", [" \n", " ab\n", "cd\n"])
    rows = read_rows(tmp_path / "wiki.test.raw")
    text = "\n\n".join(rows)  # "\n\n ab\n\n\ncd\n" -> 12 characters
    windows = perplexity_windows(CharTokenizer(), seqlen=5, data_dir=tmp_path)
    assert windows.shape == (len(text) // 5, 5)
    assert windows.flatten().tolist() == [ord(c) for c in text[:10]]


def test_calibration_windows_are_seeded_and_inside_the_stream(tmp_path):
    _write(tmp_path, "train.txt", [f" line {i} with some words\n" for i in range(50)])
    tok = CharTokenizer()
    a = calibration_windows(tok, nsamples=16, seqlen=32, seed=3, data_dir=tmp_path)
    b = calibration_windows(tok, nsamples=16, seqlen=32, seed=3, data_dir=tmp_path)
    c = calibration_windows(tok, nsamples=16, seqlen=32, seed=4, data_dir=tmp_path)
    assert a.shape == (16, 32) and torch.equal(a, b) and not torch.equal(a, c)
    stream = "".join(chr(int(t)) for t in tok(" ".join(load_rows("train", tmp_path))).input_ids[0])
    for window in a:
        assert "".join(chr(int(t)) for t in window) in stream


def test_heldout_windows_overlap_no_calibration_window(tmp_path):
    _write(tmp_path, "train.txt", [f" line {i} with some words\n" for i in range(200)])
    tok, calibration = CharTokenizer(), CalibrationConfig(nsamples=8, seqlen=16, seed=1)
    ids, _ = calibration_stream(tok, tmp_path)
    calib = window_starts(ids.numel(), 8, 16, 1)
    assert torch.equal(calibration_windows(tok, 8, 16, 1, tmp_path), torch.stack([ids[s : s + 16] for s in calib]))
    held, starts = heldout_windows(tok, 5, calibration, tmp_path)
    assert held.shape == (5, 16) and len(set(starts)) == 5
    assert all(abs(s - c) >= 16 for s in starts for c in calib)  # no token shared with a calibration window
    more, _ = heldout_windows(tok, 3, calibration, tmp_path, seed_offset=7, avoid=starts)
    assert torch.equal(heldout_windows(tok, 5, calibration, tmp_path)[0], held)  # seeded


@pytest.mark.parametrize("kwargs, match", [(dict(nsamples=0), "nsamples=0"), (dict(seqlen=1.5), "seqlen=1.5"),
                                           (dict(seed="0"), "seed='0'"), (dict(batch_size=True), "batch_size=True")])
def test_calibration_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibrationConfig(**kwargs)


def test_env_variable_is_the_default_data_dir(tmp_path, monkeypatch):
    _write(tmp_path, "wiki.valid.raw", [" hello there\n"])
    monkeypatch.setenv("RCPU_DATA_DIR", str(tmp_path))
    assert load_rows("valid") == [" hello there\n"]


@pytest.mark.parametrize(
    "lines, call, error, match",
    [
        (None, lambda d: load_rows("test", d), FileNotFoundError, "no WikiText-2 'test' split"),
        ([" \n", "\n"], lambda d: load_rows("test", d), ValueError, "split is empty"),
        ([" ab\n"], lambda d: perplexity_windows(CharTokenizer(), 64, d), ValueError, "fewer tokens|fewer than one window"),
        ([" ab\n"], lambda d: load_rows("dev", d), ValueError, "split='dev'"),
    ],
)
def test_bad_data_gives_clear_errors(tmp_path, lines, call, error, match):
    if lines is not None:
        _write(tmp_path, "wiki.test.raw", lines)
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_missing_data_dir_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_rows("test", tmp_path / "nope")
