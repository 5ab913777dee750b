"""LightningCLI with ``prune`` and ``export`` subcommands (the repository's ``cli.py`` calls :func:`main`).

    python cli.py prune -c configs/smollm2-rcpu.yaml              # calibrate, prune, save, test
    python cli.py test  -c configs/smollm2-rcpu.yaml --model.model outputs/smollm2/rcpu-rotation-20
    python cli.py fit   -c configs/smollm2-rcpu.yaml --pruning.export_dir outputs/finetuned   # prune, fine-tune, export
    python cli.py export -c configs/smollm2-rcpu.yaml --ckpt_path run/last.ckpt --pruning.export_dir outputs/ft
    python cli.py prune -c configs/smollm2-rcpu.yaml --print_config
    python cli.py report outputs/smollm2/*.json --markdown table.md  # tables from results files
    python cli.py gguf outputs/smollm2/rcpu-rotation-20 model.gguf --dtype q8_0  # for llama.cpp / ollama

Top-level config keys: ``trainer`` (:class:`RCPUTrainer`: Lightning's options plus ``prune_evaluate``
and ``prune_evaluate_dense``), ``model`` (any LightningModule: ``class_path`` + ``init_args``; default
:class:`CausalLMModule`, whose ``init_args`` may be given directly), ``data`` (any LightningDataModule,
default :class:`RCPUDataModule`), ``pruning`` (:class:`RCPUPruningCallback`, always instantiated; it
prunes only in ``predict``/``prune`` and ``fit``, and exports in ``fit``/``export``) and ``results``
(:class:`RCPUResultsWriter`). Every subcommand accepts every key (its own ones are ``ckpt_path`` and,
for ``fit``, ``optimizer``/``lr_scheduler``), so a config printed by one loads in any other.

Errors of the kinds user mistakes raise (``ValueError``, ``TypeError``, ``OSError``: a bad value, a
missing file, an output that exists) end with one line on stderr and exit status 2; set
``RCPU_DEBUG=1`` for the traceback.

SIGTERM (a scheduler's warning before a kill, ``kill PID``) stops the run the way Ctrl-C does:
:class:`Terminated` (a ``KeyboardInterrupt``) is raised where the process is, Lightning's interrupt
handling runs the callbacks' ``on_exception`` and tears down, outputs still being staged are removed
(every output is renamed into place only when complete), and the process exits with status 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import inspect
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import types
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ..files import check_output_path, format_output_path
from ..models.adapter import check_supported
from ..models.loading import check_model_spec
from ..pruning.config import PruningConfig
from ..pruning.io import DENSE_FIELDS, PLAN_FILE, load_plan, output_fields
from .callback import RCPUPruningCallback
from .checkpointing import install_plan_hooks
from .data import RCPUDataModule
from .logs import configure_logging
from .module import CausalLMModule
from .progress import LogProgress
from .results import RCPUResultsWriter, config_path, summary_lines
from .steps import PRUNING_STAGES

DEBUG_ENV = "RCPU_DEBUG"

PRUNE_HELP = (
    "Calibrate, prune, save the pruned checkpoint, evaluate it, print a summary. Options most runs need "
    "(all of them follow): -c CONFIG (a YAML file; several merge in order); --model.model SPEC (the LM: hub "
    "id, folder, .gguf file, smollm2-135m; --model.help CausalLMModule lists the module's options); "
    "--pruning.config.method/.ratio/.compensation/.structure/.head_rounding (what to prune and how); "
    "--pruning.save_dir DIR (the pruned checkpoint; --pruning.overwrite true replaces an existing one); "
    "--data.calibration.nsamples N (calibration windows: fewer = faster); "
    "--data.ppl_max_windows N (evaluate on the first N perplexity windows); --data.tasks [boolq,piqa,...] "
    "(zero-shot tasks); --results.path FILE (the results JSON; --results.overwrite true replaces one); "
    "--trainer.prune_evaluate_dense true (also evaluate the dense model, for a before/after); --print_config; "
    "--data.help RCPUDataModule lists every data option."
)
FIT_HELP = (
    "Prune (unless the model is a pruned folder), fine-tune, export; progress lines with the training loss, a "
    "summary at the end and a results JSON (.fit.json). Options most runs need (all of them follow): -c CONFIG; "
    "--model.model SPEC (a dense model to prune and fine-tune, or a pruned folder to fine-tune as it is); "
    "--trainer.max_steps N / --trainer.max_epochs N; --data.train_nsamples N (training windows, default 256) and "
    "--data.val_nsamples N (held-out validation windows, default 64): fewer = faster; --data.train_batch_size N; "
    "--model.lr LR; --pruning.config.ratio R or --pruning.schedule '{0: 0.1, 1: 0.2}' (gradual); "
    "--pruning.export_dir DIR (the fine-tuned model); --trainer.enable_checkpointing true (Lightning checkpoints "
    "for cli.py export); --data.help RCPUDataModule and --model.help CausalLMModule list every data / model option."
)
EXPORT_HELP = (
    "Write the model of a Lightning checkpoint (e.g. the end of a fit: pruned and fine-tuned) as a Hugging Face "
    "checkpoint that from_pretrained / load_pruned reload: -c CONFIG (the run's config: the model it started "
    "from) --ckpt_path FILE.ckpt --pruning.export_dir DIR (--pruning.overwrite true replaces an existing one)."
)
DEFAULT_MODEL = "rcpu_lightning.lightning.CausalLMModule"
DEFAULT_DATA = "rcpu_lightning.lightning.RCPUDataModule"


def pruned_again(what: str) -> ValueError:
    """The refusal of pruning a model that is pruned already (``what`` says how it was found out)."""
    return ValueError(f"{what}: pruning a pruned model again is not supported; start from the dense model")


def _writers(trainer: Trainer) -> list[RCPUResultsWriter]:
    return [c for c in trainer.callbacks if isinstance(c, RCPUResultsWriter)]


def _pruning_callback(trainer: Trainer, entry: str) -> RCPUPruningCallback:
    found = [c for c in trainer.callbacks if isinstance(c, RCPUPruningCallback)]
    if not found:
        raise ValueError(f"Trainer.{entry} needs an RCPUPruningCallback in trainer.callbacks")
    return found[0]


class RCPUTrainer(Trainer):
    """A Trainer with ``prune`` (a predict loop that calibrates and prunes, then by default a test loop)
    and ``export`` (a Lightning checkpoint's model as a Hugging Face checkpoint).

    Args:
        prune_evaluate: ``prune`` evaluates the pruned model (test loop) afterwards, in the same process.
        prune_evaluate_dense: ``prune`` also evaluates the dense model first, for the before/after summary.
        *args, **kwargs: :class:`lightning.pytorch.Trainer`'s.

    The two ``prune_*`` options are constructor arguments (``trainer.prune_evaluate_dense`` in YAML)
    rather than arguments of ``prune`` so that every subcommand accepts a config ``prune`` printed.
    """

    def __init__(self, *args: Any, prune_evaluate: bool = True, prune_evaluate_dense: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prune_evaluate = bool(prune_evaluate)
        self.prune_evaluate_dense = bool(prune_evaluate_dense)

    def prune(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        """Calibrate on the calibration windows, prune, save the pruned checkpoint, then evaluate it.

        The options most runs need are listed once, in ``PRUNE_HELP`` (``cli.py prune --help``).

        Args:
            model: the LightningModule wrapping the dense LM.
            datamodule: provides ``predict_dataloader`` (calibration) and ``test_dataloader``.
            ckpt_path: start from the weights of this Lightning checkpoint (of a dense model).
            weights_only: how ``ckpt_path`` is read (see ``Trainer.predict``).

        Returns:
            The module's ``eval_results`` (empty without evaluation).
        """
        callback = _pruning_callback(self, "prune")
        if getattr(model, "checkpoint_source", None) is not None and (self.prune_evaluate or self.prune_evaluate_dense):
            raise ValueError("an out-of-core model (model.out_of_core: true) is pruned from disk to disk and cannot be "
                             "evaluated in this process: set --trainer.prune_evaluate false (and prune_evaluate_dense "
                             "false), then evaluate the written folder: cli.py test --model.model SAVE_DIR")
        if getattr(model, "pruning_plan", None) is not None:
            raise pruned_again("the model already carries a pruning plan (a pruned folder?)")
        if self.prune_evaluate_dense:  # the writer keeps it as the "dense" baseline
            self.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=weights_only)
        self.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False,
                     weights_only=weights_only)
        if not callback.pruned:
            raise pruned_again(f"the checkpoint {ckpt_path} holds a pruned model")
        if self.prune_evaluate:
            self.test(model, datamodule=datamodule, verbose=False)
        self._print_summary()
        return dict(getattr(model, "eval_results", {}) or {})

    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        weights_only: Optional[bool] = None,
    ) -> None:
        """Prune (when an RCPUPruningCallback is configured), fine-tune, export, then print a summary.

        The summary (rank 0) gives the pruning, the training steps and last loss, the validation
        perplexity and the outputs; the same record goes to ``results.path`` (``.fit.json``).
        Arguments: those of :meth:`lightning.pytorch.Trainer.fit`.
        """
        super().fit(model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders,
                    datamodule=datamodule, ckpt_path=ckpt_path, weights_only=weights_only)
        self._print_summary()

    def export(
        self,
        model: LightningModule,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        weights_only: Optional[bool] = None,
    ) -> str:
        """Write the model of a Lightning checkpoint as a Hugging Face checkpoint to ``pruning.export_dir``.

        The module is built from the config (the model the run started from), given the pruned shapes
        of the checkpoint's plan and its weights (what Lightning's restore does: ``on_load_checkpoint``,
        then ``load_state_dict``); rank 0 writes ``save_pruned`` + tokenizer + ``pruning_report.json``,
        atomically. ``--pruning.overwrite true`` replaces an existing non-empty folder.

        Args:
            model: the LightningModule the checkpoint was trained with.
            datamodule: unused (accepted so that every config loads).
            ckpt_path: the Lightning checkpoint (e.g. ``last.ckpt`` of a fit).
            weights_only: how ``ckpt_path`` is read (see ``Trainer.fit``).

        Returns:
            The folder written.
        """
        callback = _pruning_callback(self, "export")
        if not ckpt_path:
            raise ValueError("export needs --ckpt_path (a Lightning checkpoint, e.g. the last.ckpt of a fit)")
        if callback.export_path() is None:
            raise ValueError("export needs --pruning.export_dir DIR (where the Hugging Face checkpoint goes)")
        check_output_path(callback.export_path(), callback.overwrite, "pruning.export_dir",
                          "--pruning.overwrite true")
        checkpoint = self.strategy.load_checkpoint(ckpt_path, weights_only=weights_only)
        install_plan_hooks(model)
        if callable(getattr(model, "configure_model", None)):
            model.configure_model()  # as Lightning does before restoring (a no-op unless overridden)
        model.on_load_checkpoint(checkpoint)  # the plan's shapes first
        model.load_state_dict(checkpoint["state_dict"], strict=model.strict_loading)
        state = (checkpoint.get("callbacks") or {}).get(callback.state_key)
        if state is not None:  # what the fit's pruning did, for pruning_report.json
            callback.load_state_dict(state)
        epoch, step = checkpoint.get("epoch"), checkpoint.get("global_step")
        return callback.export(self, model, source=f"{ckpt_path} (epoch {epoch}, step {step})")

    @rank_zero_only
    def _print_summary(self) -> None:
        for writer in _writers(self):
            if writer.record:
                print("\n".join(summary_lines(writer.record)), flush=True)


class RunConfig(SaveConfigCallback):
    """Gives the results writers the run's resolved config: they save it into the results JSON
    (``config``) and beside it (``<results>.config.yaml``) when they write the results, so every
    results file says how to reproduce it and a run that fails before its results leaves no config."""

    def __init__(self, parser, config, **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # rank 0 only
        text = self.parser.dump(self.config, skip_none=False)
        for writer in _writers(trainer):
            writer.extra["config"] = text


class RCPUArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line without the usage dump (``--help`` has it):
    an unknown option names the closest valid one (``did you mean --data.ppl_max_windows?``)."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error or os.environ.get(DEBUG_ENV):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        print(f"error: {_parser_error_line(self, message)} (every option: {prog} --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def _parser_error_line(parser: argparse.ArgumentParser, message: str) -> str:
    """One line for a parser error; an unknown option gets the closest valid name."""
    unknown = re.search(r"unrecognized arguments: --(\S+)", message)
    key = re.search(r'Parser key "([^"]+)"', message)
    class_path = re.search(r"class_path '([^']+)'", message)
    nested = re.search(r"Option '([^']+)' is not accepted", message) or (unknown if class_path else None)
    if nested and key:  # an init argument of a class given by class_path (model, data)
        option = nested.group(1).split("=", 1)[0]
        names = {f"--{key.group(1)}.{name}" for name in _init_arg_names(class_path.group(1) if class_path else None)}
        return _unknown_option(f"--{key.group(1)}.{option}", names)
    if unknown:
        return _unknown_option("--" + unknown.group(1).split("=", 1)[0], _option_names(parser))
    choice = re.search(r"invalid choice: '([^']+)' \(choose from (.*?)\)", message, re.S)
    if choice:  # a subcommand typo
        names = set(re.findall(r"[\w-]+", choice.group(2)))
        close = difflib.get_close_matches(choice.group(1), sorted(names), n=1, cutoff=0.6)
        return f"unknown subcommand {choice.group(1)!r}" + (f"; did you mean {close[0]}?" if close else "")
    return message.strip()


def _unknown_option(typo: str, names: set[str]) -> str:
    close = difflib.get_close_matches(typo, sorted(names), n=1, cutoff=0.6)
    return f"unknown option {typo}" + (f"; did you mean {close[0]}?" if close else "")


def _option_names(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``--option`` of a parser and of its subcommands' parsers."""
    names: set[str] = set()
    for action in parser._actions:
        names.update(o for o in action.option_strings if o.startswith("--"))
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            names |= _option_names(sub)
    return names


def _init_arg_names(class_path: Optional[str]) -> set[str]:
    """A class's ``__init__`` arguments as option suffixes (``ppl_max_windows``, ``calibration.nsamples``)."""
    if not class_path:
        return set()
    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return set()
    names = set()
    for param in params:
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        names.add(param.name)
        if dataclasses.is_dataclass(param.default):  # e.g. calibration: CalibrationConfig
            names.update(f"{param.name}.{f.name}" for f in dataclasses.fields(param.default))
    return names


def check_config_files(argv: list[str]) -> None:
    """Read every ``-c``/``--config`` file once before the parser does, so that a YAML syntax error names
    the file and the line (jsonargparse reports ``"<unicode string>", line 4``)."""
    import yaml

    files = [b for a, b in zip(argv, argv[1:]) if a in ("-c", "--config")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith(("--config=", "-c="))]
    for name in files:
        path = Path(name).expanduser()
        if not path.is_file():
            continue  # the parser says so
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"config file {name}{where}: YAML syntax error: {problem}") from None


class RCPUCLI(LightningCLI):
    """LightningCLI with ``prune`` and ``export``; ``model``/``data`` take any LightningModule/DataModule
    (``class_path`` + ``init_args``), by default :class:`CausalLMModule` / :class:`RCPUDataModule`."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "prune": {"model", "datamodule"}, "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        # Forced callbacks under their own keys: override files merge into them (a list entry in
        # trainer.callbacks would be replaced wholesale by a second config file).
        parser.add_lightning_class_args(RCPUPruningCallback, "pruning")
        parser.add_lightning_class_args(RCPUResultsWriter, "results")
        # The default classes, so that a config may give their init_args directly (model: {model: ...}).
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})

    def before_instantiate_classes(self) -> None:
        """Check what needs no model before any weight is loaded: the model spec and its architecture, the
        local data files and every output location (the callback and the writer check again later)."""
        config, sub = self.config[self.subcommand], self.subcommand
        model_cls, model_args = _class_and_args(config.model)
        spec = getattr(model_args, "model", None) if issubclass(model_cls, CausalLMModule) else None
        pruned_input = False
        if isinstance(spec, (str, os.PathLike)):
            kind = check_model_spec(spec)
            pruned_input = kind == "folder" and (Path(spec).expanduser() / PLAN_FILE).is_file()
            if kind == "folder" and sub in PRUNING_STAGES:
                _check_architecture(Path(spec).expanduser())
        if sub == "prune" and pruned_input:
            raise pruned_again(f"model.model={str(spec)!r} is a pruned folder (it holds {PLAN_FILE})")
        # a pruned folder is fine-tuned as it is
        prunes = sub in PRUNING_STAGES and not pruned_input
        # a resumed fit's own outputs are recognised after its checkpoint is restored (callback, writer)
        resumed = sub == "fit" and bool(config.get("ckpt_path"))
        data_cls, data = _class_and_args(config.data)
        nsamples = None
        if issubclass(data_cls, RCPUDataModule):
            nsamples = data.calibration.nsamples
            RCPUDataModule.check_local_data(data.data_dir, calibration=prunes or sub in ("fit", "validate"),
                                            evaluation=sub in ("prune", "test"), ppl_split=data.ppl_split,
                                            perplexity=data.perplexity, tasks=data.tasks or [])
        pruning = config.pruning
        fields = output_fields(PruningConfig(**vars(pruning.config)), nsamples,
                               pruning.schedule if isinstance(pruning.schedule, dict) else None)
        if prunes and pruning.save_dir and not resumed:
            check_output_path(format_output_path(pruning.save_dir, fields), pruning.overwrite,
                              "pruning.save_dir", "--pruning.overwrite true")
        if sub == "export" and not config.get("ckpt_path"):
            raise ValueError("export needs --ckpt_path (a Lightning checkpoint, e.g. the last.ckpt of a fit)")
        if sub == "export" and not pruning.export_dir:
            raise ValueError("export needs --pruning.export_dir DIR (where the Hugging Face checkpoint goes)")
        if sub in ("fit", "export") and pruning.export_dir and not resumed:
            export_fields = fields if prunes else _folder_fields(spec)
            check_output_path(format_output_path(pruning.export_dir, export_fields), pruning.overwrite,
                              "pruning.export_dir", "--pruning.overwrite true")
        if config.results.path and sub != "export" and not resumed:
            if not prunes:
                fields = _folder_fields(spec)
            path = format_output_path(config.results.path, {**fields, "stage": sub})
            for file in (path, config_path(path)):
                check_output_path(file, config.results.overwrite, "results.path", "--results.overwrite true")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Progress as log lines when stderr is not a terminal (a file, a pipe, CI): Lightning's bars
        would stay silent there until each loop ends."""
        trainer = self.config_init[self.subcommand]["trainer"]
        callbacks = trainer.get("callbacks") or []
        if not sys.stderr.isatty() and trainer.get("enable_progress_bar") is not False and \
                not any(isinstance(c, ProgressBar) for c in callbacks):
            trainer["callbacks"] = [*callbacks, LogProgress()]
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        for writer in _writers(self.trainer):
            writer.stage = self.subcommand
            writer.extra["command"] = shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:])


def _class_and_args(node: Any) -> tuple[type, Any]:
    """(class, init_args) of a ``class_path``/``init_args`` config node."""
    module, _, name = str(node.class_path).rpartition(".")
    return getattr(importlib.import_module(module), name), node.init_args


def _check_architecture(folder: Path) -> None:
    """Refuse, before any weight is read, a model folder of an architecture the engine cannot prune."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # loading will say what is wrong with it
    check_supported(types.SimpleNamespace(model_type=config.get("model_type"),
                                          architectures=config.get("architectures")))


def _folder_fields(spec: Any) -> dict[str, Any]:
    """Placeholder values of a run that evaluates ``spec``: its plan's settings for a pruned folder, else dense."""
    folder = Path(str(spec)).expanduser()
    if isinstance(spec, (str, os.PathLike)) and (folder / PLAN_FILE).is_file():
        plan = load_plan(folder)
        return {**(plan.config or {}), "nsamples": plan.calibration.get("nsamples")}
    return dict(DENSE_FIELDS)


class _NoProductTips(logging.Filter):
    """Drop Lightning's advertisement for its cloud logger from CLI runs (it is not a warning), and its
    "Detected KeyboardInterrupt" when the interrupt was a SIGTERM (the CLI says so itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "💡 Tip:" not in message and not (_SIGTERM.received and "Detected KeyboardInterrupt" in message)


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where the process is, so that it stops the way Ctrl-C does."""


class _SigtermToInterrupt:
    """The CLI's SIGTERM handler (installed by :func:`main` unless the process already has one). Lightning
    keeps it: while a Trainer runs, its own handler (which only sets ``trainer.received_sigterm``) calls
    this one after it."""

    STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.received:  # a second SIGTERM during the shutdown does not interrupt the cleanup
            self.received = True
            raise Terminated("SIGTERM")

    def install(self) -> Any:
        """Install when nobody else handles SIGTERM (main thread only); returns what to restore, or None."""
        self.received = False
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return None
        return signal.signal(signal.SIGTERM, self)

    def stopped(self) -> "SystemExit":
        print(f"stopped by SIGTERM: the run was interrupted like Ctrl-C; outputs still being written were removed "
              f"(each output appears complete or not at all); exit status {self.STATUS}", file=sys.stderr, flush=True)
        return SystemExit(self.STATUS)


_SIGTERM = _SigtermToInterrupt()


def main(args: Optional[list[str]] = None) -> Optional[RCPUCLI]:
    """Run the CLI; user errors end with one line on stderr (exit 2) unless ``RCPU_DEBUG=1``."""
    argv = sys.argv[1:] if args is None else list(args)
    configure_logging()
    for handler in logging.getLogger("lightning.pytorch").handlers:
        if not any(isinstance(f, _NoProductTips) for f in handler.filters):
            handler.addFilter(_NoProductTips())
    previous = _SIGTERM.install()
    try:
        return _run(argv, args)
    except (Terminated, SystemExit):  # Lightning turns an interrupt inside a loop into sys.exit(1)
        if _SIGTERM.received:
            raise _SIGTERM.stopped() from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str], args: Optional[list[str]]) -> Optional[RCPUCLI]:
    try:
        if argv[:1] == ["report"]:
            from ..eval.report import report_cli

            report_cli(argv[1:], prog="cli.py report")
            return None
        if argv[:1] == ["gguf"]:
            from ..export.gguf import gguf_cli

            gguf_cli(argv[1:], prog="cli.py gguf")
            return None
        check_config_files(argv)
        return RCPUCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       trainer_class=RCPUTrainer, save_config_callback=RunConfig, parser_class=RCPUArgumentParser,
                       parser_kwargs={"prune": {"description": PRUNE_HELP}, "fit": {"description": FIT_HELP},
                                      "export": {"description": EXPORT_HELP}},
                       args=args)
    except (ValueError, TypeError, OSError) as exc:  # bad values, missing files, outputs that exist
        if os.environ.get(DEBUG_ENV):
            raise
        exc = _users_error(exc)
        print(f"error: {type(exc).__name__}: {exc}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _users_error(exc: BaseException) -> BaseException:
    """The error a class raised while jsonargparse instantiated it, not jsonargparse's multi-line "Does not
    validate against any of the Union subtypes" wrapper around it (the class's error is its direct cause)."""
    while str(exc).startswith("Does not validate against any of the Union subtypes") and \
            isinstance(exc.__cause__, (ValueError, TypeError, OSError)):
        exc = exc.__cause__
    return exc
