"""Prompts and continuations of the seven tasks, built from the shared JSONL files, against the harness
protocol (eval-protocol.md 1.2). Expected strings are written by hand from the protocol and the files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from rcpu_lightning.eval.tasks import (
    ALL_TASKS,
    PAPER_METRIC,
    TASKS,
    build_item,
    hellaswag_preprocess,
    load_docs,
    load_items,
    recapitalize_hellaswag_ctx,
)

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))  # tools/compare_harness.py


def _first(task, shared_data):
    items = load_items(task, shared_data, limit=1)
    assert len(items) == 1
    return items[0]


def _raw_first_line(shared_data, name):
    with open(shared_data / "zeroshot" / name, encoding="utf-8") as f:
        return json.loads(f.readline())


def test_boolq_first_item(shared_data):
    item = _first("boolq", shared_data)
    raw = _raw_first_line(shared_data, "boolq.jsonl")
    ctx = item.requests[0][0]
    assert ctx.startswith("Ethanol fuel -- All biomass goes through at least some of these steps:")
    assert ctx.endswith(
        "concluded that producing ethanol from corn uses much less petroleum than producing gasoline."
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    assert ctx == raw["passage"] + "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    assert [c for _, c in item.requests] == [" no", " yes"]
    assert item.requests[1][0] == ctx
    assert item.gold == 0  # label false
    assert item.choice_lengths == (2, 3)


def test_piqa_first_item(shared_data):
    item = _first("piqa", shared_data)
    ctx = "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    sol1 = (
        "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
        "you will also need to supply it with a water bottle and a food dish."
    )
    sol2 = (
        "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
        "you will also need to supply it with a water bottle and a food dish."
    )
    assert item.requests == ((ctx, " " + sol1), (ctx, " " + sol2))
    assert item.gold == 0
    assert item.choice_lengths == (len(sol1), len(sol2))


def test_hellaswag_first_item_capitalizes_ctx_b(shared_data):
    item = _first("hellaswag", shared_data)
    # HF item 0: ctx_a "A man is sitting on a roof.", ctx_b "he" -> lm-eval capitalizes ctx_b.
    ctx = "Roof shingle removal: A man is sitting on a roof. He"
    assert [r[0] for r in item.requests] == [ctx] * 4
    assert [r[1] for r in item.requests] == [
        " is using wrap to wrap a pair of skis.",
        " is ripping level tiles off.",
        " is holding a rubik's cube.",
        " starts pulling up roofing on a roof.",
    ]
    assert item.gold == 3
    assert item.choice_lengths == (37, 27, 26, 36)


def test_hellaswag_olmes_subset_first_item(shared_data):
    item = _first("hellaswag_olmes1000", shared_data)
    ctx = (
        "Finance and Business: How to apply for a marriage license in florida. Call your local courthouse. "
        "Find the phone number for your local county courthouse and call to inquire about your county's "
        "specific requirements for getting a marriage license. If an appointment is required, schedule an "
        "appointment with the courthouse."
    )
    assert item.requests[0][0] == ctx
    assert item.requests[3][1] == (
        " You don't have to be a resident of the county in which you apply, but it's often easier to apply "
        "for a license at a local courthouse. You can also find information about your local courthouse "
        "online at the state of florida website."
    )
    assert item.gold == 3
    assert len(item.requests) == 4


def test_winogrande_first_item_partial_scoring(shared_data):
    item = _first("winogrande", shared_data)
    # sentence "Sarah was a much better surgeon than Maria so _ always got the easier cases."
    assert item.requests == (
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
    )
    assert item.gold == 1  # answer "2"
    assert PAPER_METRIC["winogrande"] == "acc"


def test_arc_easy_first_item(shared_data):
    item = _first("arc_easy", shared_data)
    ctx = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert item.requests == (
        (ctx, " Sunlight is the source of energy for nearly all ecosystems."),
        (ctx, " Most ecosystems are found on land instead of in water."),
        (ctx, " Carbon dioxide is more available than other gases."),
        (ctx, " The producers in all ecosystems are plants."),
    )
    assert item.gold == 0  # answerKey A


def test_arc_challenge_first_item(shared_data):
    item = _first("arc_challenge", shared_data)
    ctx = (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\nAnswer:"
    )
    assert item.requests == (
        (ctx, " Planetary density will decrease."),
        (ctx, " Planetary years will become longer."),
        (ctx, " Planetary days will become shorter."),
        (ctx, " Planetary gravity will become stronger."),
    )
    assert item.gold == 2  # answerKey C
    assert item.choice_lengths == (32, 35, 35, 39)


def test_openbookqa_first_item_bare_stem(shared_data):
    item = _first("openbookqa", shared_data)
    ctx = (
        "A person wants to start saving money so that they can afford a nice vacation at the end of the year. "
        "After looking over their budget and expenses, they decide the best way to save money is to"
    )
    assert item.requests == (
        (ctx, " make more phone calls"),
        (ctx, " quit eating lunch out"),
        (ctx, " buy less with monopoly money"),
        (ctx, " have lunch with friends"),
    )
    assert item.gold == 1  # answerKey B


def test_arc_numeric_labels_and_odd_choice_counts(shared_data):
    items = {it.doc_id: it for it in load_items("arc_challenge", shared_data)}
    docs, _ = load_docs("arc_challenge", shared_data)
    by_id = {d["id"]: i for i, d in enumerate(docs)}
    # NYSEDREGENTS_2008_8_34: labels 1-4, answerKey "2" -> index 1
    assert items[by_id["NYSEDREGENTS_2008_8_34"]].gold == 1
    # NYSEDREGENTS_2010_4_4: three choices A-C, answerKey A
    it = items[by_id["NYSEDREGENTS_2010_4_4"]]
    assert it.num_choices == 3 and it.gold == 0
    # TIMSS_1995_8_J7: five choices A-E, answerKey D
    it = items[by_id["TIMSS_1995_8_J7"]]
    assert it.num_choices == 5 and it.gold == 3


def test_full_split_sizes(shared_data):
    sizes = {t: len(load_items(t, shared_data)) for t in ALL_TASKS}
    assert sizes == {
        "boolq": 3270,
        "piqa": 1838,
        "hellaswag": 10042,
        "hellaswag_olmes1000": 1000,
        "winogrande": 1267,
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "openbookqa": 500,
    }


def test_limit_takes_first_n(shared_data):
    first5 = load_items("piqa", shared_data, limit=5)
    full = load_items("piqa", shared_data)
    assert first5 == full[:5]
    assert [it.doc_id for it in first5] == [0, 1, 2, 3, 4]


def test_size_check_catches_truncated_file(tmp_path, shared_data):
    (tmp_path / "zeroshot").mkdir()
    lines = (shared_data / "zeroshot" / "openbookqa.jsonl").read_text().splitlines()[:10]
    (tmp_path / "zeroshot" / "openbookqa.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="expected 500"):
        load_items("openbookqa", tmp_path)
    assert len(load_items("openbookqa", tmp_path, check_size=False)) == 10
    assert len(load_items("openbookqa", tmp_path, limit=3)) == 3


def test_hellaswag_preprocess_matches_lm_eval_rules():
    # HF-style doc (ctx_a / ctx_b): exact lm-eval processing incl. capitalize() lower-casing the rest.
    doc = {
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to paint a wall [title] Buy paint.  [step] Pick a DARK color.",
        "ctx_b": "then TAKE a brush",
        "endings": ["[substeps] Dip it. [title] Paint the wall. ", "Stop [step] now."],
        "label": "0",
    }
    item = build_item("hellaswag", doc)
    # strip -> " [title]" -> ". " -> drop [..] -> ONE pass of "  " -> " " (three spaces become two)
    assert item.requests[0][0] == "Home and Garden: How to paint a wall. Buy paint.  Pick a DARK color. Then take a brush"
    # the ending is stripped BEFORE the tag is removed, so lm-eval keeps a leading space (choice " Dip ...")
    # and the continuation starts with two spaces; " [title]" after a period leaves ".."
    assert [c for _, c in item.requests] == ["  Dip it.. Paint the wall.", " Stop now."]
    assert item.choice_lengths == (len(" Dip it.. Paint the wall."), len("Stop now."))
    assert item.gold == 0
    assert hellaswag_preprocess("a [title] b") == "a. b"


def test_hellaswag_recapitalize():
    assert recapitalize_hellaswag_ctx("A man is sitting on a roof. he") == "A man is sitting on a roof. He"
    assert recapitalize_hellaswag_ctx("The girl sings. the man plays a DVD") == "The girl sings. The man plays a dvd"
    assert recapitalize_hellaswag_ctx("Wash the car. Dry it.") == "Wash the car. Dry it."
    assert recapitalize_hellaswag_ctx("no sentence end here") == "no sentence end here"


def test_hellaswag_full_file_agrees_with_lm_eval_formatted_subset(shared_data):
    """The documented claim about the rebuilt full file versus the genuine lm-eval-formatted subset."""
    full = load_items("hellaswag", shared_data)
    subset = load_items("hellaswag_olmes1000", shared_data)

    def key(text):
        return re.sub(r"[^a-z]", "", text.lower())[:80]

    index = {}
    for it in full:
        index.setdefault(key(it.requests[0][1]) + key(it.requests[1][1]), []).append(it)
    queries = {"equal": 0, "dotdot": 0}
    choices = {"equal": 0, "leading_space": 0, "dotdot": 0}
    for s in subset:
        it = index[key(s.requests[0][1]) + key(s.requests[1][1])][0]
        assert it.gold == s.gold
        q_full, q_sub = it.requests[0][0], s.requests[0][0]
        if q_full == q_sub:
            queries["equal"] += 1
        else:
            assert q_full.replace("..", ".") == q_sub.replace("..", ".")
            queries["dotdot"] += 1
        for (_, c_full), (_, c_sub) in zip(it.requests, s.requests):
            if c_full == c_sub:
                choices["equal"] += 1
                continue
            if c_sub.startswith("  "):  # lm-eval kept a leading space the full file has lost
                choices["leading_space"] += 1
                c_full = " " + c_full
            if c_full != c_sub:
                assert c_full.replace("..", ".") == c_sub.replace("..", ".")
                choices["dotdot"] += 1
    # Capitalisation of ctx_b is fully recovered; what remains are the two known artefacts.
    assert queries == {"equal": 918, "dotdot": 82}
    assert choices == {"equal": 2655, "leading_space": 1112, "dotdot": 445}


def test_hub_source_is_mocked_and_normalised(monkeypatch):
    import datasets

    calls = []
    hub_docs = {
        ("allenai/ai2_arc", "ARC-Easy", "test"): [
            {"id": "x", "question": "What is 1+1?", "choices": {"text": ["1", "2"], "label": ["A", "B"]}, "answerKey": "B"},
            {"id": "y", "question": "Q2", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "1"},
        ],
        ("Rowan/hellaswag", None, "validation"): [
            {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
             "endings": ["a.", "b.", "c.", "d."], "label": "3"},
        ],
    }

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(hub_docs[(path, name, split)])

    monkeypatch.delenv("RCPU_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs, source = load_docs("arc_easy", None, limit=2)
    assert source == "hf:allenai/ai2_arc/ARC-Easy:test"
    items = load_items("arc_easy", None, limit=2)
    assert items[0].requests[1] == ("Question: What is 1+1?\nAnswer:", " 2") and items[0].gold == 1
    assert items[1].gold == 0
    hs = load_items("hellaswag", None, limit=1)
    assert hs[0].requests[0][0] == "Roof shingle removal: A man is sitting on a roof. He" and hs[0].gold == 3
    assert calls[-1] == ("Rowan/hellaswag", None, "validation")
    with pytest.raises(ValueError, match="expected 2376"):  # full split of wrong size
        load_items("arc_easy", None)


def test_paper_metric_map():
    assert [PAPER_METRIC[t] for t in TASKS] == ["acc", "acc", "acc_norm", "acc", "acc", "acc_norm", "acc_norm"]


def test_prepare_lm_eval_tasks_writes_yaml_and_hf_layout_copies(tmp_path, shared_data):
    from compare_harness import _HARNESS_HELPERS, _HARNESS_YAML, prepare_lm_eval_tasks

    harness = tmp_path / "lm_eval_tasks"
    for rel, _, _ in _HARNESS_YAML.values():
        (harness / rel).parent.mkdir(parents=True, exist_ok=True)
        (harness / rel).write_text(
            'task: x\ndataset_path: y\noutput_type: multiple_choice\ndoc_to_text: "Question: {{question}}\\nAnswer:"\n'
            "doc_to_target: label\ntraining_split: train\n"
        )
    for rel in _HARNESS_HELPERS:
        (harness / rel).write_text("# helper\n")
    out = tmp_path / "out"
    names = prepare_lm_eval_tasks(out, shared_data, harness)
    assert names == [f"local_{t}" for t in TASKS]
    yaml = (out / "local_arc_easy.yaml").read_text()
    assert "task: local_arc_easy\ndataset_path: json\n" in yaml
    assert f"    test: {(out / 'arc_easy.jsonl').resolve()}\ntest_split: test\n" in yaml
    assert 'doc_to_text: "Question: {{question}}\\nAnswer:"' in yaml and "training_split" not in yaml
    assert "  - metric: acc_norm" in yaml and "  - metric: acc_norm" not in (out / "local_boolq.yaml").read_text()
    arc = json.loads((out / "arc_easy.jsonl").read_text().splitlines()[0])
    assert arc["question"].startswith("Which statement best explains") and arc["choices"]["label"] == ["A", "B", "C", "D"]
    hs = json.loads((out / "hellaswag.jsonl").read_text().splitlines()[0])
    assert hs["ctx_a"] == "A man is sitting on a roof. He" and hs["ctx_b"] == "" and hs["label"] == "3"
    assert json.loads((out / "boolq.jsonl").read_text().splitlines()[0])["label"] == 0
    assert (out / "utils.py").is_file() and (out / "preprocess_winogrande.py").is_file()
