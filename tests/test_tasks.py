"""Task specs: every shipped spec on the real data, and validation errors that name file and value."""
from collections import Counter

import pytest

from annotune.base.cli import UserError
from annotune.data.examples import build_examples, split_examples
from annotune.data.sources import load_source_rows
from annotune.data.task import available_tasks, load_task


def examples_of(name, merge=None):
    spec = load_task(name, merge)
    return spec, build_examples(spec, load_source_rows(spec))[0]


def test_every_shipped_task_builds_examples_on_real_data():
    assert len(available_tasks()) >= 12
    for name in available_tasks():
        spec, examples = examples_of(name)
        assert examples["train"], name
        key = "label" if spec.type == "classification" else "target"
        for rows in examples.values():
            for ex in rows[:50]:
                assert ex["text"].strip() and ex[key].strip(), (name, ex)
                if spec.type == "classification":
                    assert ex["label"] in spec.label_names


def test_politosphere_gold_distribution_and_authors_merges():
    _, ex = examples_of("politosphere")
    counts = Counter(e["label"] for e in ex["train"])
    # SOURCES.md: the 113 agreed rows; spellings of "non-Polarized" normalised into one label.
    assert counts == {"Not Relevant": 34, "Not Sure": 20, "Anti Gun Polarized": 19, "Support Gun Polarized": 16,
                      "Support Gun non-Polarized": 11, "Neutral": 8, "Anti Gun non-Polarized": 5}
    _, ex = examples_of("politosphere", "pol_unpol_oth")
    assert Counter(e["label"] for e in ex["train"]) == {"other": 62, "polarized": 35, "unpolarized": 16}
    _, ex = examples_of("politosphere", "supp_anti_oth")
    assert Counter(e["label"] for e in ex["train"]) == {"other": 62, "support gun": 27, "anti gun": 24}


def test_sbic_biased_is_inverted_and_offensive_binning_is_stated():
    spec, ex = examples_of("sbic_biased")
    # hasBiasedImplication = 1 means NO implied stereotype: 2,860 such rows in agg.dev.
    assert Counter(e["label"] for e in ex["train"]) == {"not biased": 2860, "biased": 1806}
    spec, ex = examples_of("sbic_offensive")
    assert "0.25" in spec.description and "0.75" in spec.description
    counts = Counter(e["label"] for e in ex["train"])
    assert set(counts) == {"not offensive", "maybe offensive", "offensive"} and sum(counts.values()) == 4666
    _, ex = examples_of("sbic_target")
    targets = Counter(e["target"] for e in ex["train"])
    assert targets["none"] > 1000  # empty lists become "none"
    assert any(", " in t for t in targets)  # several groups are joined


def test_file_splits_are_kept_and_single_files_are_split_stratified():
    _, ex = examples_of("sst2")
    assert {k: len(v) for k, v in ex.items()} == {"train": 1000, "validation": 872, "test": 1821}
    _, ex = examples_of("politosphere")
    a = split_examples(ex, 0.2, 0.0, seed=42)
    b = split_examples(ex, 0.2, 0.0, seed=42)
    assert [e["id"] for e in a["validation"]] == [e["id"] for e in b["validation"]]
    assert (len(a["train"]), len(a["validation"])) == (90, 23)  # the seeds' 0.8 / 0.2
    assert not {e["id"] for e in a["train"]} & {e["id"] for e in a["validation"]}
    # Stratified: every label with >= 3 examples appears in validation.
    counts = Counter(e["label"] for e in ex["train"])
    assert {l for l, c in counts.items() if c >= 3} <= {e["label"] for e in a["validation"]}


BASE = """
name: toy
type: classification
data:
  splits: {train: {path: "%s", format: csv}}
  text: "{text}"
  label_column: label
labels:
  - {name: yes, definition: "it is"}
  - {name: no}
prompt: {system: "You label.", instruction: "Answer {label_list}.", input: "Text: {text}"}
"""


@pytest.fixture
def toy_csv(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text("text,label\nhello,yes\nbye,no\nhey,Yes\n")
    return path


def write_spec(tmp_path, text):
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.replace("  - {name: no}", "  - {name: YES}"), "duplicate label"),
    (lambda s: s.replace("labels:\n  - {name: yes, definition: \"it is\"}\n  - {name: no}\n", "labels: []\n"),
     "non-empty 'labels'"),
    (lambda s: s + "bogus: 1\n", "unknown key"),
    (lambda s: s.replace("type: classification", "type: regression"), "type must be"),
    (lambda s: s + "merges:\n  m: {labels: [{name: a, from: [yes, no]}, {name: b, from: [no]}]}\n", "maps label 'no' twice"),
    (lambda s: s + "merges:\n  m: {labels: [{name: a, from: [yes]}]}\n", "leaves label(s) ['no'] unmapped"),
    (lambda s: s + "merges:\n  m: {labels: [{name: a, from: [maybe]}, {name: b, from: [yes, no]}]}\n", "'maybe'"),
    (lambda s: s.replace('text: "{text}"', 'text: "{text.__class__}"'), "may only name columns"),
    (lambda s: s + "  - {name: bad, definition: a, b}\n" if False else s.replace("{name: no}", "{name: no, definition: a, b}"),
     "quote a definition"),
    (lambda s: s + "\n  broken: [", "not valid YAML"),
])
def test_malformed_specs_fail_with_file_and_value(tmp_path, toy_csv, mutate, message):
    path = write_spec(tmp_path, mutate(BASE % toy_csv))
    with pytest.raises(UserError) as err:
        load_task(str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_raw_label_names_value_and_row(tmp_path, toy_csv):
    toy_csv.write_text("text,label\nhello,yes\nbye,perhaps\n")
    spec = load_task(str(write_spec(tmp_path, BASE % toy_csv)))
    with pytest.raises(UserError) as err:
        build_examples(spec, load_source_rows(spec))
    assert "'perhaps'" in str(err.value) and "row 1" in str(err.value)


def test_labels_match_case_insensitively(tmp_path, toy_csv):
    spec = load_task(str(write_spec(tmp_path, BASE % toy_csv)))
    ex, _ = build_examples(spec, load_source_rows(spec))
    assert [e["label"] for e in ex["train"]] == ["yes", "no", "yes"]


def test_unknown_task_and_merge():
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(UserError, match="unknown merge 'nope'"):
        load_task("politosphere", "nope")
