"""cli.py: prune (calibrate, prune, save, evaluate) and test on the saved checkpoint, in-process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from tiny_setup import save_tiny_llama, tiny_config, write_tiny_wikitext  # noqa: E402

from rcpu_lightning.lightning.cli import main  # noqa: E402


pytestmark = pytest.mark.usefixtures("cli_argv")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny_llama(root / "model")
    data = write_tiny_wikitext(root / "data")
    return root, model, data


@pytest.fixture(scope="module")
def pruned_run(tiny):
    root, model, data = tiny
    out = root / "out"
    cfg = tiny_config(root / "tiny.yaml", model, data, out)
    old, sys.argv = sys.argv, ["cli.py"]
    try:
        main(["prune", "-c", str(cfg)])
    finally:
        sys.argv = old
    return cfg, out


def test_prune_writes_checkpoint_and_results(pruned_run):
    cfg, out = pruned_run
    ckpt = out / "pruned"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "pruning_plan.json").is_file()
    assert (ckpt / "tokenizer.json").is_file()
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "rcpu" and res["ratio"] == pytest.approx(0.34)
    assert res["params_after"] < res["params_before"] and 0.2 < res["decoder_params_removed"] < 0.4
    assert 0 < res["model_params_removed"] < res["decoder_params_removed"]  # embeddings and head are not pruned
    assert res["ppl"] > 1 and res["tokens"] == 9 * 15 and res["ppl_windows"] == 9
    assert res["calib_samples"] == 16 and res["seqlen"] == 16 and res["world_size"] == 1
    assert res["stage"] == "prune" and res["evaluation"] == "test" and "pruning:" in res["config"]
    assert res["command"].startswith("cli.py")
    plan = json.loads((ckpt / "pruning_plan.json").read_text())
    assert [len(lp["kept_heads"]) for lp in plan["layers"]] == [4, 4]  # 6 heads in 2 kv groups: 0.34 * 6 -> 2 (nearest)


def test_test_subcommand_reproduces_ppl(pruned_run, tmp_path):
    cfg, out = pruned_run
    res_path = tmp_path / "test.json"
    main(["test", "-c", str(cfg), "--model.model", str(out / "pruned"), "--results.path", str(res_path)])
    pruned = json.loads((out / "results.json").read_text())
    tested = json.loads(res_path.read_text())
    assert tested["ppl"] == pytest.approx(pruned["ppl"], rel=1e-9)
    assert tested["method"] == "rcpu" and tested["params"] == pruned["params_after"]


def test_test_with_zero_shot_task(pruned_run, tmp_path):
    cfg, out = pruned_run
    res_path = tmp_path / "zs.json"
    main(["test", "-c", str(cfg), "--model.model", str(out / "pruned"), "--results.path", str(res_path),
          "--data.tasks", "[piqa]", "--data.task_limit", "7", "--data.bos", "false"])
    res = json.loads(res_path.read_text())
    piqa = res["tasks"]["piqa"]
    assert piqa["n"] == 7 and 0 <= piqa["acc"] <= 1 and 0 <= piqa["acc_norm"] <= 1
    assert piqa["reported_metric"] == "acc" and res["bos"] is False
    assert res["ppl"] == pytest.approx(json.loads((out / "results.json").read_text())["ppl"], rel=1e-9)


def _starts(stream: torch.Tensor, row: torch.Tensor) -> list[int]:
    """Every position of ``row`` in the token stream."""
    windows = stream.unfold(0, row.numel(), 1)  # [N - L + 1, L]
    return (windows == row).all(1).nonzero().flatten().tolist()


def test_fit_prunes_finetunes_validates_on_held_out_windows_exports_and_resumes(tiny, tmp_path, caplog, monkeypatch):
    from rcpu_lightning.data import calibration_stream, window_starts
    from rcpu_lightning.pruning import load_pruned

    _, model, data = tiny
    cfg = tiny_config(tmp_path / "fit.yaml", model, data, tmp_path / "out",
                      pruning__export_dir=str(tmp_path / "out" / "finetuned"))
    args = ["--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.train_nsamples", "16", "--data.val_nsamples", "8", "--model.lr", "0.003"]
    with caplog.at_level("INFO", logger="rcpu_lightning"):
        cli = main(["fit", "-c", str(cfg), "--trainer.max_steps", "4", *args,
                    "--results.path", str(tmp_path / "out" / "{stage}.json")])
    pruned_params = cli.model.num_parameters()
    assert cli.model.pruning_plan is not None and (tmp_path / "out" / "pruned" / "pruning_plan.json").is_file()

    # training and validation windows: of the calibration split, overlapping no calibration window nor each other
    assert "overlap no calibration or training window" in caplog.text
    stream, _ = calibration_stream(cli.model.tokenizer, data)
    calibration = window_starts(stream.numel(), 16, 16, 0)
    train = [s for row in cli.datamodule.train_rows() for s in _starts(stream, row)]
    val = [s for row in cli.datamodule.val_rows() for s in _starts(stream, row)]
    assert len(train) >= 16 and len(val) >= 8  # every window found in the calibration split (not the test split)
    assert all(abs(v - c) >= 16 for v in val for c in calibration + train)
    assert all(abs(t - c) >= 16 for t in train for c in calibration)
    record = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert record["evaluation"] == "validate" and record["ppl_windows"] == 8 and "held out" in record["ppl_split"]

    # the fine-tuned model: exported at the end of fit, and again by `export` from the checkpoint
    [ckpt] = list((tmp_path / "run").rglob("*.ckpt"))
    main(["export", "-c", str(cfg), "--ckpt_path", str(ckpt), "--pruning.export_dir", str(tmp_path / "exported")])
    ids = torch.arange(32).view(2, 16)
    with torch.no_grad():
        want = cli.model.model.eval()(input_ids=ids).logits
        for folder in (tmp_path / "out" / "finetuned", tmp_path / "exported"):
            torch.testing.assert_close(load_pruned(folder).eval()(input_ids=ids).logits, want, msg=str(folder))

    res_path = tmp_path / "test.json"
    main(["test", "-c", str(cfg), "--ckpt_path", str(ckpt), "--results.path", str(res_path)])
    res = json.loads(res_path.read_text())
    assert res["params"] == pruned_params and res["method"] == "rcpu" and res["ppl"] > 1

    # resume: no calibration, no pruning, save_dir and the fit's export untouched without any overwrite flag
    import rcpu_lightning.lightning.callback as callback_module

    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    calls = []
    monkeypatch.setattr(callback_module, "capture_layer_inputs", lambda *a, **k: calls.append("capture"))
    monkeypatch.setattr(callback_module, "prune_model", lambda *a, **k: calls.append("prune"))
    again = main(["fit", "-c", str(cfg), "--trainer.max_steps", "8", *args, "--ckpt_path", str(ckpt),
                  "--pruning.export_dir", str(tmp_path / "export2"), "--results.path", "null"])
    assert calls == [] and again.trainer.global_step == 8 and again.model.num_parameters() == pruned_params
    assert {p: p.stat().st_mtime_ns for p in written} == written and (tmp_path / "export2" / "config.json").is_file()


def test_a_users_own_lightning_module_plugs_in_through_class_path(tiny, tmp_path):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "user.yaml", model, data, tmp_path / "out",
                      model={"class_path": "user_classes.PlainLM", "init_args": {"path": str(model)}})
    cli = main(["fit", "-c", str(cfg), "--trainer.max_steps", "4", "--data.train_nsamples", "16",
                "--data.val_nsamples", "8", "--results.path", "null"])
    assert type(cli.model).__name__ == "PlainLM" and cli.model.pruning_plan is not None
    assert (tmp_path / "out" / "pruned" / "pruning_plan.json").is_file() and len(cli.model.losses) == 4
    main(["prune", "-c", str(cfg), "--pruning.save_dir", str(tmp_path / "p2"), "--model.lr", "0.01"])
    assert json.loads((tmp_path / "out" / "results.json").read_text())["method"] == "rcpu"


def test_dense_test_differs_from_pruned(pruned_run, tiny, tmp_path):
    cfg, out = pruned_run
    res_path = tmp_path / "dense.json"
    main(["test", "-c", str(cfg), "--results.path", str(res_path)])
    dense = json.loads(res_path.read_text())
    assert dense["method"] == "dense" and dense["ppl"] != pytest.approx(json.loads((out / "results.json").read_text())["ppl"])


@pytest.mark.slow  # ~10 s
def test_print_config_round_trips_across_subcommands(pruned_run, tmp_path, capsys):
    cfg, _ = pruned_run
    with pytest.raises(SystemExit):
        main(["prune", "-c", str(cfg), "--pruning.config.ratio", "0.25", "--trainer.prune_evaluate_dense", "true",
              "--pruning.schedule", "{0: 0.25}", "--print_config"])
    printed = capsys.readouterr().out
    dumped = yaml.safe_load(printed)
    assert dumped["pruning"]["config"]["ratio"] == 0.25 and dumped["pruning"]["config"]["head_rounding"] == "nearest"
    assert dumped["trainer"]["prune_evaluate_dense"] is True and dumped["model"]["class_path"].endswith("CausalLMModule")
    again = tmp_path / "again.yaml"
    again.write_text(printed)
    with pytest.raises(SystemExit):
        main(["prune", "-c", str(again), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out) == dumped
    for sub in ("fit", "test", "validate", "predict", "export"):  # prune's config loads everywhere, and back
        with pytest.raises(SystemExit) as exit_info:
            main([sub, "-c", str(again), "--print_config"])
        assert exit_info.value.code in (0, None), (sub, capsys.readouterr().err)
        other = yaml.safe_load(capsys.readouterr().out)
        assert {k: other[k] for k in ("trainer", "model", "data", "pruning")} == \
            {k: dumped[k] for k in ("trainer", "model", "data", "pruning")}, sub
        if sub == "fit":  # and fit's back into prune and export (validate/test/predict add their own loop flags)
            (tmp_path / "fit.yaml").write_text(yaml.safe_dump(other))
            for back in ("prune", "export"):
                with pytest.raises(SystemExit) as exit_info:
                    main([back, "-c", str(tmp_path / "fit.yaml"), "--print_config"])
                assert exit_info.value.code in (0, None), (back, capsys.readouterr().err)
                capsys.readouterr()


def test_bad_ratio_fails_before_anything_is_written(tiny, tmp_path, capsys):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "bad.yaml", model, data, tmp_path / "out", pruning__config__ratio=1.5)
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "-c", str(cfg)])
    assert exit_info.value.code != 0 and "ratio=1.5 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_renamed_target_key_is_refused_naming_compensation_target(tiny, tmp_path, capsys):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "old.yaml", model, data, tmp_path / "out", pruning__config__target="dense")
    for argv in (["prune", "-c", str(cfg)],  # in a YAML file, and as a flag
                 ["prune", "-c", str(tiny_config(tmp_path / "new.yaml", model, data, tmp_path / "out")),
                  "--pruning.config.target", "dense"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code != 0 and "renamed 'compensation_target'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_method_is_rejected_by_the_parser(tiny, tmp_path, capsys):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "bad.yaml", model, data, tmp_path / "out", pruning__config__method="sparsegpt")
    with pytest.raises(SystemExit):
        main(["prune", "-c", str(cfg)])
    assert "sparsegpt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_calibration_data_fails_without_checkpoint(tiny, tmp_path, capsys):
    _, model, data = tiny
    only_test = tmp_path / "data"
    only_test.mkdir()
    (only_test / "wiki.test.raw").write_text((data / "wiki.test.raw").read_text())
    cfg = tiny_config(tmp_path / "bad.yaml", model, only_test, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "-c", str(cfg)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no WikiText-2 train or valid split" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _bases_and_overrides() -> list[tuple[Path, ...]]:
    """Every config file: a base alone, an override with its base."""
    combos = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        if "trainer" in yaml.safe_load(path.read_text()):
            combos.append((path,))
        else:
            base = CONFIGS / ("smollm2-rcpu.yaml" if path.parent == CONFIGS else "paper/llama-7b.yaml")
            combos.append((base, path))
    return combos


@pytest.mark.slow  # ~70 s: every config file through every subcommand
@pytest.mark.parametrize("files", _bases_and_overrides(), ids=lambda files: "+".join(f.stem for f in files))
@pytest.mark.parametrize("subcommand", ["prune", "fit", "test", "validate", "predict", "export"])
def test_every_config_loads_for_every_subcommand(files, subcommand, capsys):
    args = [subcommand] + [a for f in files for a in ("-c", str(f))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    _assert_contains(printed, yaml.safe_load(files[-1].read_text()), files[-1].name)
    if files[0].parent.name == "paper":  # the paper's protocol: seven tasks, no BOS
        assert len(printed["data"]["init_args"]["tasks"]) == 7 and printed["data"]["init_args"]["bos"] is False


def test_paper_methods_cover_the_tables():
    methods = {m.stem for m in (CONFIGS / "paper" / "methods").glob("*.yaml")}
    assert methods >= {"rcpu", "rcpu-scale", "wanda-sp", "flap", "ablation-none", "ablation-o-proj",
                       "ablation-down-proj", "least-squares"}


def test_smollm2_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "-c", str(CONFIGS / "smollm2-rcpu.yaml"), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["init_args"]["model"] == "smollm2-135m" and cfg["pruning"]["config"]["head_rounding"] == "nearest"
    calibration = cfg["data"]["init_args"]["calibration"]
    assert (calibration["nsamples"], calibration["seqlen"], cfg["pruning"]["config"]["ratio"]) == (128, 128, 0.2)


def _assert_contains(config: dict, override: dict, where: str) -> None:
    """Every (nested) value of ``override`` is in ``config`` (a class's arguments given without ``init_args``
    are its ``init_args``)."""
    if "init_args" in config and "init_args" not in override and "class_path" not in override:
        config = config["init_args"]
    for key, value in override.items():
        if isinstance(value, dict):
            _assert_contains(config[key], value, where)
        else:
            assert config[key] == value, (where, key)


# -- the first hour of a user (issue #12): nothing of theirs is lost, errors come first and in one line ---
@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded (the checks must come before any weight is read)."""
    import rcpu_lightning.lightning.module as module

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the checks refused the run")

    monkeypatch.setattr(module, "load_causal_lm", refuse)


def _fails(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


def test_a_users_save_dir_is_never_replaced_unasked(tiny, tmp_path, capsys, monkeypatch, no_model_load):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out")
    mine = tmp_path / "out" / "pruned" / "thesis.tex"
    mine.parent.mkdir(parents=True)
    mine.write_text("three years of work")
    err = _fails(["prune", "-c", str(cfg)], capsys)
    assert "pruning.save_dir" in err and "already exists" in err and "--pruning.overwrite true" in err
    assert mine.read_text() == "three years of work" and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pruned"]
    # the flag replaces only a folder this tool wrote: a user's files are never deleted (issue #23)
    (mine.parent / "figures").mkdir()
    (mine.parent / "figures" / "plot.pdf").write_text("a figure")
    err = _fails(["prune", "-c", str(cfg), "--pruning.overwrite", "true"], capsys)
    assert "pruning.save_dir" in err and "files this tool did not write (figures/plot.pdf, thesis.tex)" in err
    assert mine.read_text() == "three years of work" and (mine.parent / "figures" / "plot.pdf").is_file()
    monkeypatch.undo()  # the model may load now
    for file in (mine, mine.parent / "figures" / "plot.pdf"):
        file.unlink()
    (mine.parent / "figures").rmdir()
    main(["prune", "-c", str(cfg), "--pruning.overwrite", "true"])
    assert (tmp_path / "out" / "pruned" / "pruning_plan.json").is_file()
    # a folder it wrote is replaced with the flag, and refused again once the user adds a file to it
    main(["prune", "-c", str(cfg), "--pruning.overwrite", "true", "--results.overwrite", "true"])
    (tmp_path / "out" / "pruned" / "notes.md").write_text("my notes")
    assert "(notes.md)" in _fails(["prune", "-c", str(cfg), "--pruning.overwrite", "true",
                                   "--results.overwrite", "true"], capsys)
    assert (tmp_path / "out" / "pruned" / "notes.md").read_text() == "my notes"


def test_unwritable_outputs_fail_before_the_model_loads(tiny, tmp_path, capsys, no_model_load):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out", pruning__save_dir="/proc/x/pruned")
    assert "cannot be written" in _fails(["prune", "-c", str(cfg)], capsys)
    cfg = tiny_config(tmp_path / "d.yaml", model, data, tmp_path / "out", results__path="/proc/x/r.json")
    assert "results.path" in _fails(["test", "-c", str(cfg)], capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [("/nonexistent/model", "no such folder: '/nonexistent/model'"),
                                           ("./models/missing", "no such folder"),
                                           ("weights.gguf", "no such GGUF file")])
def test_a_missing_model_is_named_in_one_line(tiny, tmp_path, capsys, spec, message):
    _, _, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", "unused", data, tmp_path / "out")
    assert message in _fails(["prune", "-c", str(cfg), "--model.model", spec], capsys)
    assert not (tmp_path / "out").exists()


def test_missing_data_files_are_named_before_the_model_loads(tiny, tmp_path, capsys, no_model_load):
    _, model, data = tiny
    bare = tmp_path / "data"
    bare.mkdir()
    (bare / "train.txt").write_text((data / "train.txt").read_text())
    cfg = tiny_config(tmp_path / "c.yaml", model, bare, tmp_path / "out", data__tasks=["piqa"])
    err = _fails(["prune", "-c", str(cfg)], capsys)
    assert "no WikiText-2 'test' split" in err and "piqa.jsonl" in err


def test_evaluating_a_pruned_folder_never_replaces_its_prune_record(tiny, tmp_path, capsys):
    _, model, data = tiny
    template = str(tmp_path / "out" / "{method}-{ratio_pct}.{stage}.json")
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out", results__path=template)
    main(["prune", "-c", str(cfg), "--trainer.prune_evaluate_dense", "true"])
    printed = capsys.readouterr().out
    record = tmp_path / "out" / "rcpu-34.prune.json"
    before = record.read_text()
    prune = json.loads(before)
    assert prune["dense"]["ppl"] > 1 and prune["ppl"] > 1 and prune["dense"]["ppl"] != prune["ppl"]
    # the end-of-run summary: dense vs pruned, both removed fractions, where things went
    assert f"dense {prune['dense']['ppl']:.2f} -> pruned {prune['ppl']:.2f}" in printed
    assert "whole model -" in printed and "decoder layers -" in printed and str(record) in printed
    assert (tmp_path / "out" / "rcpu-34.prune.config.yaml").is_file()
    main(["test", "-c", str(cfg), "--model.model", str(tmp_path / "out" / "pruned")])
    assert record.read_text() == before  # untouched
    tested = json.loads((tmp_path / "out" / "rcpu-34.test.json").read_text())
    assert tested["stage"] == "test" and tested["ppl"] == pytest.approx(prune["ppl"], rel=1e-9)
    # a second prune into the same results file is refused up front (another save_dir, same record)
    err = _fails(["prune", "-c", str(cfg), "--pruning.save_dir", str(tmp_path / "other")], capsys)
    assert "rcpu-34.prune.json" in err and "--results.overwrite true" in err and not (tmp_path / "other").exists()


def test_prune_reports_progress_per_layer_and_emits_none_of_our_warnings(tiny, tmp_path, caplog, recwarn):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out", pruning__progress=True,
                      trainer__enable_progress_bar=True)
    with caplog.at_level("INFO", logger="rcpu_lightning"):
        main(["prune", "-c", str(cfg)])
    text = caplog.text
    assert "layer 1/2:" in text and "layer 2/2:" in text and "RSS" in text  # per-layer progress, not a TTY: log lines
    assert "test: 5/5 batches" in text  # evaluation progress as log lines too (LogProgress)
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "predict returned None" in m or "in eval mode" in m], messages
    out = tmp_path / "out" / "pruned"
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask and (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_prune_help_is_readable(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    for option in ("--pruning.config.attn_ratio", "--pruning.config.mlp_ratio", "--pruning.overwrite",
                   "--pruning.schedule", "--pruning.export_dir", "--trainer.prune_evaluate_dense",
                   "--data.calibration.nsamples", "--model.model", "--model.help CausalLMModule"):
        assert option in text
    attn = text[text.index("  --pruning.config.attn_ratio"):]
    assert "fraction of attention heads" in attn[:300]  # every knob has its description
    assert "torch.nn." not in text and len(text.splitlines()) < 900  # no catalogue of torch modules
    with pytest.raises(SystemExit):  # the module's own options, one flag away
        main(["prune", "--model.help", "CausalLMModule"])
    model = capsys.readouterr().out
    model = model[model.index("  --model.model MODEL"):model.index("  --model.dtype")]
    assert "hub id" in model and "torch.nn." not in model


def test_a_non_llama_model_is_named_in_one_line_before_it_loads(tiny, tmp_path, capsys, no_model_load):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, _, data = tiny
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=32)).save_pretrained(folder)
    cfg = tiny_config(tmp_path / "c.yaml", folder, data, tmp_path / "out")
    capsys.readouterr()  # save_pretrained's progress bar
    for sub in ("prune", "fit", "predict"):
        err = _fails([sub, "-c", str(cfg)], capsys)
        assert "unsupported architecture GPT2LMHeadModel (model_type='gpt2')" in err, err
        assert "['llama', 'mistral', 'qwen2']" in err and err.count("\n") == 2  # the message and the RCPU_DEBUG hint
    assert not (tmp_path / "out").exists()


def test_pruning_a_pruned_folder_or_exporting_without_a_checkpoint_is_refused_up_front(pruned_run, tmp_path, capsys,
                                                                                         no_model_load):
    cfg, out = pruned_run
    err = _fails(["prune", "-c", str(cfg), "--model.model", str(out / "pruned")], capsys)
    assert "is a pruned folder" in err and "start from the dense model" in err
    assert "--ckpt_path" in _fails(["export", "-c", str(cfg), "--pruning.export_dir", str(tmp_path / "x")], capsys)
    assert "--pruning.export_dir" in _fails(["export", "-c", str(cfg), "--ckpt_path", "x.ckpt"], capsys)


def test_prune_streams_an_out_of_core_model_from_disk_to_disk(pruned_run, tiny, tmp_path, caplog):
    from safetensors.torch import load_file

    _, model, data = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, data, tmp_path / "out", model__out_of_core=True,
                      trainer__prune_evaluate=False, pruning__progress=True)
    with caplog.at_level("INFO", logger="rcpu_lightning"):
        main(["prune", "-c", str(cfg)])
    assert "layer 1/2:" in caplog.text and "RSS" in caplog.text  # per-layer progress with memory
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["stage"] == "prune" and "ppl" not in res and 0.2 < res["decoder_params_removed"] < 0.4
    streamed = {}
    for shard in (tmp_path / "out" / "pruned").glob("*.safetensors"):
        streamed.update(load_file(shard))
    in_memory = load_file(pruned_run[1] / "pruned" / "model.safetensors")  # the same prune, in memory
    assert streamed.keys() == in_memory.keys()
    for name, value in in_memory.items():  # same kernels, same batches, same order: ~8 ulps allowed
        torch.testing.assert_close(streamed[name], value, atol=1e-6, rtol=0, msg=name)
    cfg = tiny_config(tmp_path / "d.yaml", model, data, tmp_path / "out2", model__out_of_core=True)
    with pytest.raises(SystemExit) as exit_info:  # evaluation asked for: refused before any work
        main(["prune", "-c", str(cfg)])
    assert exit_info.value.code == 2 and not (tmp_path / "out2").exists()


# -- a run's own outputs (issue #23) -------------------------------------------------------------------
def test_a_run_that_fails_leaves_nothing_that_blocks_its_retry(tiny, tmp_path, capsys, monkeypatch):
    # no data_dir and the hub unreachable: the run fails after setup, when it builds the calibration
    # windows; its config file used to be written in setup and refused the identical retry (issue #23)
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.delenv("RCPU_DATA_DIR", raising=False)
    _, model, _ = tiny
    cfg = tiny_config(tmp_path / "c.yaml", model, "unused", tmp_path / "out", data__data_dir=None)
    for attempt in ("first", "retry"):
        err = _fails(["prune", "-c", str(cfg)], capsys)
        assert "Couldn't reach 'wikitext'" in err and "OutputExistsError" not in err, (attempt, err)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*")), attempt


def test_a_resumed_fit_keeps_the_outputs_of_its_own_run_without_overwrite_flags(tiny, tmp_path, capsys):
    # through the CLI a resume needed --results.overwrite true (and --pruning.overwrite true once
    # export_dir was written) because the first run's results and config files existed (issue #23)
    _, model, data = tiny
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path / "fit.yaml", model, data, out, pruning__export_dir=str(out / "finetuned"),
                      results__path=str(out / "{stage}.json"))
    args = ["-c", str(cfg), "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.train_nsamples", "16", "--data.val_nsamples", "8"]
    first = main(["fit", *args, "--trainer.max_steps", "4"])
    written = json.loads((out / "fit.json").read_text())
    assert (out / "fit.config.yaml").is_file() and (out / "finetuned" / "pruning_report.json").is_file()
    [ckpt] = list((tmp_path / "run").rglob("*.ckpt"))

    again = main(["fit", *args, "--trainer.max_steps", "8", "--ckpt_path", str(ckpt)])
    assert again.trainer.global_step == 8 and again.model.pruning_plan == first.model.pruning_plan
    record = json.loads((out / "fit.json").read_text())
    assert record["run_id"] == written["run_id"] and record["seconds"] != written["seconds"]
    assert "ckpt_path: " + str(ckpt) in (out / "fit.config.yaml").read_text()
    assert json.loads((out / "finetuned" / "pruning_report.json").read_text())["weights"].endswith("step 8)")

    # a new run into the same outputs is still refused, before the model loads
    err = _fails(["fit", *args, "--trainer.max_steps", "4"], capsys)
    assert "already exists" in err and "--pruning.overwrite true" in err
    # and so is a resume whose checkpoint belongs to another run (results of a fit with other outputs)
    other = tiny_config(tmp_path / "other.yaml", model, data, tmp_path / "other")
    main(["fit", "-c", str(other), *args[2:], "--trainer.default_root_dir", str(tmp_path / "run2"),
          "--trainer.max_steps", "4", "--pruning.export_dir", "null", "--results.path", "null"])
    [other_ckpt] = list((tmp_path / "run2").rglob("*.ckpt"))
    err = _fails(["fit", *args, "--trainer.max_steps", "8", "--ckpt_path", str(other_ckpt)], capsys)
    assert f"results.path '{out / 'fit.json'}' already exists" in err
    err = _fails(["fit", *args, "--trainer.max_steps", "8", "--ckpt_path", str(other_ckpt), "--results.path", "null"],
                 capsys)
    assert f"pruning.save_dir '{out / 'pruned'}' already exists" in err


def test_the_out_of_core_config_runs_on_the_machine_it_is_started_on(tiny, tmp_path, capsys):
    # configs/llama-out-of-core.yaml as the README gives it, on a CPU-only machine (accelerator auto)
    _, model, data = tiny
    main(["prune", "-c", str(CONFIGS / "llama-out-of-core.yaml"), "--model.model", str(model),
          "--pruning.save_dir", str(tmp_path / "pruned"), "--results.path", str(tmp_path / "r.json"),
          "--data.data_dir", str(data), "--data.calibration.nsamples", "8", "--data.calibration.seqlen", "16",
          "--data.calibration.batch_size", "4", "--trainer.enable_progress_bar", "false"])
    assert (tmp_path / "pruned" / "pruning_plan.json").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["stage"] == "prune"
    # the config names no dtype: the pruned shards keep the checkpoint's (the tiny model's float32)
    source_dtype = json.loads((model / "config.json").read_text())["dtype"]
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["dtype"] == source_dtype == "float32"


@pytest.mark.parametrize("damage", ["no safetensors", "truncated shard"])
def test_an_unreadable_out_of_core_checkpoint_is_one_line(tiny, tmp_path, capsys, damage):
    import shutil

    _, model, data = tiny
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    if damage == "no safetensors":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-64])
    cfg = tiny_config(tmp_path / "c.yaml", broken, data, tmp_path / "out", model__out_of_core=True,
                      trainer__prune_evaluate=False)
    with pytest.raises(SystemExit):
        main(["prune", "-c", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and "Union" not in err[0] and len(err) == 2, err  # + the RCPU_DEBUG hint
    assert ("has no safetensors weights" if damage == "no safetensors" else "model.safetensors' is not a complete") in err[0]


def test_a_users_own_logged_test_metrics_reach_the_summary_and_the_results(tiny, tmp_path, capsys):
    _, model, data = tiny
    cfg = tiny_config(tmp_path / "user.yaml", model, data, tmp_path / "out",
                      model={"class_path": "user_classes.LoggingLM", "init_args": {"path": str(model)}})
    main(["prune", "-c", str(cfg)])
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["metrics"]) == {"test/my_loss", "test/tokens_seen"} and res["metrics"]["test/my_loss"] > 0
    assert res["metrics"]["test/tokens_seen"] == 9 * 16  # every perplexity window's tokens, summed over batches
    out = capsys.readouterr().out
    assert f"test/my_loss {res['metrics']['test/my_loss']:.4g}" in out and "test/tokens_seen 144" in out
