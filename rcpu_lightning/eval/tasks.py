"""Zero-shot multiple-choice tasks built exactly like lm-evaluation-harness (eval-protocol.md section 1).

Each document becomes a :class:`MultipleChoiceItem`: one ``(context, continuation)`` loglikelihood request
per choice, the gold index, and the character lengths used by ``acc_norm``.

* Every continuation is ``" " + choice`` (the harness ``target_delimiter``); ``choice_lengths`` are
  ``len(choice)`` *without* that space.
* WinoGrande is "multiple-input" (partial scoring): the contexts vary with the option and the single
  continuation is shared; ``choice_lengths`` are then the lengths of the context strings, as in the
  harness (only ``acc`` is reported for WinoGrande).

Data sources
------------
``load_items(task, data_dir=...)`` reads ``<data_dir>/zeroshot/<file>.jsonl`` (the layout of
``/work/shared/data``; see its README for provenance). Without a ``data_dir`` (and without the
``RCPU_DATA_DIR`` environment variable) the Hugging Face datasets the harness uses are loaded through
``datasets.load_dataset``. Both layouts are normalised to the Hugging Face field names, then the same
builders run.

HellaSwag has two local sources (neither is byte-exact lm-eval; the hub source is):

* ``hellaswag`` -- the full 10,042-item validation set from ``hellaswag.jsonl`` (llama.cpp / klosax text
  export of rowanz ``hellaswag_val.jsonl``). That export joined ``ctx_a + " " + ctx_b`` without
  capitalising ``ctx_b`` and ran its own tag cleanup (drop ``[header]``/``[step]``/``[substeps]``, then
  ``" [title]" -> ". "``, collapse double spaces, strip one leading space). lm-eval builds
  ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``; we rebuild it as
  ``activity_label + ": " + recapitalized(ctx)`` where :func:`recapitalize_hellaswag_ctx` applies
  ``str.capitalize()`` to a trailing fragment that follows the last sentence end and starts lower-case
  (that fragment is ``ctx_b``), then run lm-eval's ``preprocess`` (idempotent here). Checked against the
  genuine 1,000-item lm-eval-formatted subset (tests/test_eval_zeroshot_data.py): every gold label and
  every string agrees up to two artefacts -- (1) 1,112 of the 4,000 endings lack the **leading space**
  lm-eval keeps when an ending starts with a tag (lm-eval strips before removing the tag, so its
  continuation starts with two spaces; the export stripped it), which shifts those endings' log-likelihood
  and ``acc_norm`` length by one character; (2) 82 queries and 445 endings have ``".."`` where the subset
  has ``"."`` (lm-eval's own ``" [title]" -> ". "`` after a period produces ``".."``; the OLMES subset
  appears to collapse it -- inferred from the code, not confirmed). Without the capitalisation rebuild only
  699/1000 queries would agree. 439/1000 items are identical in every string.
* ``hellaswag_olmes1000`` -- ``hellaswag_subset1000_olmes.jsonl`` used verbatim (``query``, ``choices``,
  ``gold``): a random 1,000-item subset with lm-eval's capitalisation and leading spaces, ``".."``
  collapsed (see above). Prefer it when string exactness matters more than the full split.

The hub source of ``hellaswag`` (``Rowan/hellaswag``) has ``ctx_a``/``ctx_b`` and is processed exactly as
lm-eval does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..data.wikitext import LOCAL_DATA_HINT, hub_failure, resolve_data_dir  # the one data_dir rule: argument, else $RCPU_DATA_DIR, else the hub

__all__ = [
    "MultipleChoiceItem",
    "TASKS",
    "ALL_TASKS",
    "PAPER_METRIC",
    "TASK_SPECS",
    "TaskSpec",
    "build_item",
    "hellaswag_preprocess",
    "recapitalize_hellaswag_ctx",
    "load_docs",
    "load_items",
    "resolve_data_dir",
]

#: The seven tasks of the pruning papers, in table order.
TASKS: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
#: Every task name this module can build (the seven plus the exact HellaSwag subset).
ALL_TASKS: tuple[str, ...] = TASKS + ("hellaswag_olmes1000",)

#: Metric that LLM-Pruner / FLAP tables report per task (eval-protocol.md section 1.4).
PAPER_METRIC: dict[str, str] = {
    "boolq": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "hellaswag_olmes1000": "acc_norm",
    "winogrande": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One document: a loglikelihood request per choice, the gold index and the acc_norm lengths."""

    task: str
    doc_id: int
    requests: tuple[tuple[str, str], ...]
    gold: int
    choice_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.requests) != len(self.choice_lengths) or not self.requests:
            raise ValueError("requests and choice_lengths must be non-empty and of equal length")
        if not 0 <= self.gold < len(self.requests):
            raise ValueError(f"gold index {self.gold} out of range for {len(self.requests)} choices")

    @property
    def num_choices(self) -> int:
        return len(self.requests)


# ----------------------------------------------------------------------------------------------------
# Document -> item builders (Hugging Face field layout)
# ----------------------------------------------------------------------------------------------------


def _choices_item(task: str, doc_id: int, context: str, choices: Sequence[str], gold: int) -> MultipleChoiceItem:
    return MultipleChoiceItem(
        task=task,
        doc_id=doc_id,
        requests=tuple((context, TARGET_DELIMITER + c) for c in choices),
        gold=int(gold),
        choice_lengths=tuple(len(c) for c in choices),
    )


def hellaswag_preprocess(text: str) -> str:
    """lm-eval ``tasks/hellaswag/utils.py`` ``preprocess`` (WikiHow bracket artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


_TRAILING_FRAGMENT = re.compile(r"^(.*[.!?] )([a-z][^.!?]*)$", re.DOTALL)


def recapitalize_hellaswag_ctx(ctx: str) -> str:
    """Rebuild ``ctx_a + " " + ctx_b.capitalize()`` from the joined, uncapitalised ``ctx``.

    The trailing fragment after the last ``". "``/``"! "``/``"? "`` is taken to be ``ctx_b`` when it starts
    lower-case; ``str.capitalize()`` is applied to it (upper-cases the first letter and lower-cases the rest,
    like lm-eval). Anything else is returned unchanged.
    """
    m = _TRAILING_FRAGMENT.match(ctx)
    if m is None:
        return ctx
    return m.group(1) + m.group(2).capitalize()


def _boolq(doc: dict, i: int) -> MultipleChoiceItem:
    context = f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"
    return _choices_item("boolq", i, context, ["no", "yes"], int(doc["label"]))


def _piqa(doc: dict, i: int) -> MultipleChoiceItem:
    context = f"Question: {doc['goal']}\nAnswer:"
    return _choices_item("piqa", i, context, [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _hellaswag(doc: dict, i: int) -> MultipleChoiceItem:
    if "ctx_a" in doc:  # Hugging Face Rowan/hellaswag: exact lm-eval processing
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    else:  # local hellaswag.jsonl: ctx = ctx_a + " " + ctx_b (uncapitalised); see module docstring
        ctx = recapitalize_hellaswag_ctx(doc["ctx"])
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    choices = [hellaswag_preprocess(e) for e in doc["endings"]]
    return _choices_item("hellaswag", i, query, choices, int(doc["label"]))


def _hellaswag_olmes(doc: dict, i: int) -> MultipleChoiceItem:
    return _choices_item("hellaswag_olmes1000", i, doc["query"], list(doc["choices"]), int(doc["gold"]))


def _winogrande(doc: dict, i: int) -> MultipleChoiceItem:
    sentence = doc["sentence"]
    blank = sentence.index("_")
    contexts = [sentence[:blank] + doc["option1"], sentence[:blank] + doc["option2"]]
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    gold = {"1": 0, "2": 1}[str(doc["answer"])]
    return MultipleChoiceItem(
        task="winogrande",
        doc_id=i,
        requests=tuple((c, continuation) for c in contexts),
        gold=gold,
        choice_lengths=tuple(len(c) for c in contexts),
    )


def _arc(task: str) -> Callable[[dict, int], MultipleChoiceItem]:
    def build(doc: dict, i: int) -> MultipleChoiceItem:
        context = f"Question: {doc['question']}\nAnswer:"
        labels = list(doc["choices"]["label"])
        return _choices_item(task, i, context, list(doc["choices"]["text"]), labels.index(doc["answerKey"]))

    return build


def _openbookqa(doc: dict, i: int) -> MultipleChoiceItem:
    labels = list(doc["choices"]["label"])
    gold = labels.index(doc["answerKey"].lstrip())
    return _choices_item("openbookqa", i, doc["question_stem"], list(doc["choices"]["text"]), gold)


# ----------------------------------------------------------------------------------------------------
# Local file layout -> Hugging Face layout
# ----------------------------------------------------------------------------------------------------


def _norm_boolq(doc: dict) -> dict:
    # Local SuperGLUE file: label is a JSON bool (HF aps/super_glue: ClassLabel 0=False, 1=True).
    return {**doc, "label": int(bool(doc["label"]))}


def _norm_ai2(doc: dict) -> dict:
    # Original AI2 layout (question.stem, question.choices[{text,label}]) -> HF flattened layout.
    q = doc["question"]
    if isinstance(q, str):  # already HF layout
        return doc
    return {
        "id": doc.get("id"),
        "question": q["stem"],
        "question_stem": q["stem"],
        "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
        "answerKey": doc["answerKey"],
    }


def _identity(doc: dict) -> dict:
    return doc


@dataclass(frozen=True)
class TaskSpec:
    name: str
    builder: Callable[[dict, int], MultipleChoiceItem]
    local_file: str
    normalize_local: Callable[[dict], dict]
    hub: tuple[str, str | None, str] | None  # (path, config name, split) for datasets.load_dataset
    num_docs: int  # full scored split size, asserted when the whole split is loaded
    split_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


TASK_SPECS: dict[str, TaskSpec] = {
    "boolq": TaskSpec("boolq", _boolq, "boolq.jsonl", _norm_boolq, ("aps/super_glue", "boolq", "validation"), 3270),
    "piqa": TaskSpec("piqa", _piqa, "piqa.jsonl", _identity, ("baber/piqa", None, "validation"), 1838),
    "hellaswag": TaskSpec(
        "hellaswag", _hellaswag, "hellaswag.jsonl", _identity, ("Rowan/hellaswag", None, "validation"), 10042
    ),
    "hellaswag_olmes1000": TaskSpec(
        "hellaswag_olmes1000", _hellaswag_olmes, "hellaswag_subset1000_olmes.jsonl", _identity, None, 1000
    ),
    "winogrande": TaskSpec(
        "winogrande", _winogrande, "winogrande.jsonl", _identity, ("allenai/winogrande", "winogrande_xl", "validation"), 1267
    ),
    "arc_easy": TaskSpec("arc_easy", _arc("arc_easy"), "arc_easy.jsonl", _norm_ai2, ("allenai/ai2_arc", "ARC-Easy", "test"), 2376),
    "arc_challenge": TaskSpec(
        "arc_challenge", _arc("arc_challenge"), "arc_challenge.jsonl", _norm_ai2, ("allenai/ai2_arc", "ARC-Challenge", "test"), 1172
    ),
    "openbookqa": TaskSpec(
        "openbookqa", _openbookqa, "openbookqa.jsonl", _norm_ai2, ("allenai/openbookqa", "main", "test"), 500
    ),
}


def build_item(task: str, doc: dict, doc_id: int = 0) -> MultipleChoiceItem:
    """Build the item of one document given in the Hugging Face field layout (or the local HellaSwag one)."""
    return _spec(task).builder(doc, doc_id)


def _spec(task: str) -> TaskSpec:
    try:
        return TASK_SPECS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(ALL_TASKS)}") from None


def _read_jsonl(path: Path, limit: int | None) -> list[dict]:
    docs: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(docs) >= limit:
                break
            if line.strip():
                docs.append(json.loads(line))
    return docs


def load_docs(
    task: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    check_size: bool = True,
) -> tuple[list[dict], str]:
    """Documents of ``task`` in the Hugging Face layout, and a string naming their source.

    ``limit`` keeps the first ``limit`` documents (a subset: results are not comparable to full-split
    numbers). When the whole split is read and ``check_size`` is set, its size must equal the canonical one.
    """
    spec = _spec(task)
    if limit is not None and limit < 1:
        raise ValueError("limit must be >= 1 or None")
    root = resolve_data_dir(data_dir)
    if root is not None:
        path = root / "zeroshot" / spec.local_file
        if not path.is_file():
            raise FileNotFoundError(f"{task}: {path} not found (expected <data_dir>/zeroshot/{spec.local_file})")
        docs = [spec.normalize_local(d) for d in _read_jsonl(path, limit)]
        source = str(path)
    else:
        if spec.hub is None:
            raise ValueError(f"{task} exists only as a local file; {LOCAL_DATA_HINT}")
        from datasets import load_dataset

        hub_path, name, split = spec.hub
        try:
            ds = load_dataset(hub_path, name, split=split)
        except Exception as exc:  # no network, hub down, offline mode: say how to use local files instead
            raise hub_failure(f"zero-shot task {task!r}", exc) from exc
        n = len(ds)
        if check_size and limit is None and n != spec.num_docs:
            raise ValueError(f"{task}: hub split {hub_path}/{name}/{split} has {n} docs, expected {spec.num_docs}")
        if limit is not None:
            ds = ds.select(range(min(limit, n)))
        docs = [dict(d) for d in ds]
        source = f"hf:{hub_path}" + (f"/{name}" if name else "") + f":{split}"
        return docs, source
    if check_size and limit is None and len(docs) != spec.num_docs:
        raise ValueError(f"{task}: {source} has {len(docs)} docs, expected {spec.num_docs}")
    return docs, source


def load_items(
    task: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    check_size: bool = True,
) -> list[MultipleChoiceItem]:
    """Items of ``task`` (first ``limit`` documents if given); ``doc_id`` is the index in the split."""
    docs, _ = load_docs(task, data_dir=data_dir, limit=limit, check_size=check_size)
    return build_items(task, docs)


def build_items(task: str, docs: Iterable[dict]) -> list[MultipleChoiceItem]:
    builder = _spec(task).builder
    return [builder(doc, i) for i, doc in enumerate(docs)]
