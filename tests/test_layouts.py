"""Bring your own data: every layout a task YAML describes, read exactly (no row lost or
merged), a strict schema with suggestions, every dropped row counted, duplicates kept within one
split, a starter YAML from a file, and docs/tasks.md in step with the schema."""
import json
import re
from pathlib import Path

import pytest
import yaml

from annotune.base.cli import UserError
from annotune.data.examples import build_examples, prepare_splits
from annotune.data.prompts import Prompter
from annotune.data.schema import documented_paths
from annotune.data.sources import load_source_rows
from annotune.data.task import load_task
from conftest import REPO, run_script

LABELS = [{"name": "negative"}, {"name": "neutral"}, {"name": "positive"}]
PROMPT = {"system": "You rate tweets.", "instruction": "Answer {label_list}.", "input": "Tweet: {text}\nSentiment:"}


def write_task(folder, data, name="mine", **extra):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "type": "classification", "data": data, "labels": LABELS,
                                    "prompt": PROMPT, **extra}, sort_keys=False))
    return path


def examples_of(path):
    spec = load_task(str(path))
    return build_examples(spec, load_source_rows(spec))


def test_aligned_text_and_label_files_with_an_id_mapping_keep_every_line(tmp_path):
    texts = ['"quoted at the start, and it goes on', "second, with a comma", "", "fourth\twith a tab",
             "'single quote", "sixth"]
    (tmp_path / "train_text.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "train_labels.txt").write_text("\n".join(["0", "2", "1", "1", "0", "2"]) + "\n")
    (tmp_path / "mapping.txt").write_text("0\tnegative\n1\tneutral\n2\tpositive\n")
    split = {"path": str(tmp_path / "train_text.txt"), "format": "lines",
             "labels_path": str(tmp_path / "train_labels.txt"), "label_ids": str(tmp_path / "mapping.txt")}
    examples, dropped = examples_of(write_task(tmp_path, {"splits": {"train": split}, "text": "{text}",
                                                          "label_column": "label"}))
    rows = examples["train"]
    assert [r["text"] for r in rows] == [t for t in texts if t]  # quotes and tabs as written
    assert [r["label"] for r in rows] == ["negative", "positive", "neutral", "negative", "positive"]
    assert dropped == {"empty text": {"train": 1}}
    # One label too few: refused, naming both counts.
    (tmp_path / "train_labels.txt").write_text("\n".join(["0", "2", "1", "1", "0"]) + "\n")
    with pytest.raises(UserError, match="6 rows but .* 5 labels"):
        examples_of(tmp_path / "mine.yaml")
    (tmp_path / "train_labels.txt").write_text("\n".join(["0", "2", "1", "1", "0", "7"]) + "\n")
    with pytest.raises(UserError, match="label id '7'"):
        examples_of(tmp_path / "mine.yaml")


def test_labels_joined_from_another_file_by_id(tmp_path):
    (tmp_path / "test_text.csv").write_text("tweet_id,text\nt1,good day\nt2,bad day\nt3,a day\n")
    (tmp_path / "test_labels.csv").write_text("tweet_id,label\nt3,neutral\nt1,positive\nt2,negative\n")
    split = {"path": str(tmp_path / "test_text.csv"), "labels_join": {"path": str(tmp_path / "test_labels.csv")}}
    data = {"splits": {"train": split}, "id_column": "tweet_id", "text": "{text}", "label_column": "label"}
    examples, _ = examples_of(write_task(tmp_path, data))
    assert [(r["id"], r["label"]) for r in examples["train"]] == [("t1", "positive"), ("t2", "negative"),
                                                                   ("t3", "neutral")]
    (tmp_path / "test_labels.csv").write_text("tweet_id,label\nt3,neutral\nt1,positive\n")
    with pytest.raises(UserError, match="id 't2'.* has no label"):
        examples_of(tmp_path / "mine.yaml")


def test_plain_lines_with_ratios_in_the_yaml_train_and_evaluate_without_flags(in_tmp, tiny_llama_dir):
    # One CSV for all rows, split by the YAML's ratios; duplicates (a retweet) stay in one split.
    lines = ["text,label"] + [f"post {i} is {'good' if i % 2 else 'bad'},{'positive' if i % 2 else 'negative'}"
                              for i in range(60)] + ["  Post 7 IS   good,positive", "post 7 is good,positive"]
    (in_tmp / "all.csv").write_text("\n".join(lines) + "\n")
    data = {"splits": {"all": {"path": "all.csv"}}, "text": "{text}", "label_column": "label",
            "split_ratios": {"validation": 0.2, "test": 0.25}}
    path = write_task(in_tmp, data, name="ratios")
    spec = load_task(str(path))
    splits, info = prepare_splits(spec, Prompter(spec, "alpaca"))
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 62 and abs(sizes["test"] - 16) <= 2 and abs(sizes["validation"] - 13) <= 2
    where = {name for name, rows in splits.items() for r in rows if " ".join(r["text"].split()).casefold() == "post 7 is good"}
    assert len(where) == 1 and info["test_ratio"] == 0.25  # the three copies of post 7 stay together
    assert run_script("train", ["--task", path, "--model_name", tiny_llama_dir, "--template", "alpaca", "--quiet",
                                "--stop_condition", "steps", "--steps", 1, "--output_dir", "r"]) == 0
    assert run_script("evaluate", ["--base_only", "--task", path, "--model_name", tiny_llama_dir, "--template",
                                   "alpaca", "--split", "test", "--quiet", "--output_dir", "ev"]) == 0
    metrics = json.loads(next((in_tmp / "ev").glob("base_*/test/metrics.json")).read_text())
    assert metrics["n"] == len(splits["test"])


def test_lines_format_reads_a_plain_text_file_line_by_line(tmp_path):
    (tmp_path / "posts.txt").write_text('"a quote opens the line\n\nplain line\r\nlast without newline')
    from annotune.base.tables import read_table

    assert [r["text"] for r in read_table(str(tmp_path / "posts.txt"), "lines")] == [
        '"a quote opens the line', "", "plain line", "last without newline"]


@pytest.mark.parametrize("where,bad,message", [
    (("data",), {"lable_map": {}}, "data: unknown key 'lable_map' (did you mean 'label_map'?)"),
    (("data",), {"id_colum": "id"}, "data: unknown key 'id_colum' (did you mean 'id_column'?)"),
    (("data", "splits", "train"), {"encodng": "latin-1"},
     "data.splits.train: unknown key 'encodng' (did you mean 'encoding'?)"),
    (("prompt",), {"sytem": "x"}, "prompt: unknown key 'sytem' (did you mean 'system'?)"),
    ((), {"test_ratio": 0.2}, "top level: unknown key 'test_ratio'"),
])
def test_a_misspelled_key_anywhere_is_one_line_with_a_suggestion(in_tmp, capsys, where, bad, message):
    (in_tmp / "t.csv").write_text("text,label\nok,positive\nbad,negative\n")
    raw = {"name": "mine", "type": "classification", "labels": LABELS, "prompt": dict(PROMPT),
           "data": {"splits": {"train": {"path": "t.csv"}}, "text": "{text}", "label_column": "label"}}
    node = raw
    for key in where:
        node = node[key]
    node.update(bad)
    (in_tmp / "mine.yaml").write_text(yaml.safe_dump(raw))
    assert run_script("preprocess", ["--task", "mine.yaml", "--template", "alpaca", "--output_dir", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (in_tmp / "out").exists()


def test_empty_texts_are_counted_in_the_report_and_the_manifest(in_tmp, capsys):
    (in_tmp / "t.csv").write_text("text,label\nok,positive\n,negative\n   ,neutral\nfine,negative\nmeh,neutral\n")
    args = ["--data_path", "t.csv", "--text_column", "text", "--label_column", "label", "--template", "alpaca"]
    assert run_script("preprocess", args + ["--output_dir", "out"]) == 0
    assert "dropped 2 rows: empty text (train 2)" in capsys.readouterr().out
    manifest = json.loads((in_tmp / "out" / "manifest.json").read_text())
    assert manifest["dropped_rows"] == {"empty text": {"train": 2}}
    assert sum(v["count"] for v in manifest["splits"].values()) == 3
    assert run_script("preprocess", args + ["--output_dir", "keep", "--keep_empty"]) == 0
    manifest = json.loads((in_tmp / "keep" / "manifest.json").read_text())
    assert sum(v["count"] for v in manifest["splits"].values()) == 5 and manifest["dropped_rows"] == {}


def test_duplicates_across_given_splits_are_counted(in_tmp, capsys):
    (in_tmp / "tr.csv").write_text("text,label\nsame post,positive\nother,negative\nthird,neutral\n")
    (in_tmp / "te.csv").write_text("text,label\nSame   POST,positive\nnew one,negative\n")
    data = {"splits": {"train": {"path": "tr.csv"}, "test": {"path": "te.csv"}}, "text": "{text}",
            "label_column": "label", "split_ratios": {"validation": 0.0}}
    write_task(in_tmp, data)
    assert run_script("preprocess", ["--task", "mine.yaml", "--template", "alpaca", "--output_dir", "o"]) == 0
    assert "2 rows share their text with a row of another given split" in capsys.readouterr().out


def test_write_task_gives_a_starter_that_loads(in_tmp, capsys):
    (in_tmp / "posts.csv").write_text("post,stance\nguns now,pro\nban them,anti\nhmm,neutral\nyes,pro\n")
    args = ["--data_path", "posts.csv", "--text_column", "post", "--label_column", "stance"]
    assert run_script("preprocess", args + ["--write_task", "tasks_mine.yaml"]) == 0
    spec = load_task("tasks_mine.yaml")
    assert spec.label_names == ["anti", "neutral", "pro"] and "TODO" in spec.labels[0].definition
    assert "edit its TODOs" in capsys.readouterr().out
    assert run_script("preprocess", args + ["--write_task", "tasks_mine.yaml"]) == 2  # never overwritten silently


def test_docs_describe_every_key_the_schema_accepts():
    doc = (REPO / "docs" / "tasks.md").read_text()
    missing = [p for p in documented_paths() if f"`{p}`" not in doc]
    assert not missing, f"docs/tasks.md does not describe: {missing}"
    # and every shipped task passes the strict schema
    for path in sorted(Path(REPO / "tasks").glob("*.yaml")):
        load_task(str(path))
    assert re.search(r"docs/tasks\.md", (REPO / "README.md").read_text())
