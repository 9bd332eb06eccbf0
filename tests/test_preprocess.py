"""preprocess.py on every shipped task, its manifest, and its refusals."""
import json
import time

import pytest

from annotune.data.task import available_tasks
from conftest import run_script


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("task", available_tasks())
def test_every_task_preprocesses_with_manifest_and_preview(task, tmp_path, capsys):
    out = tmp_path / "ds"
    assert run_script("preprocess", ["--task", task, "--template", "llama2-chat", "--output_dir", out,
                                     "--max_samples", "300"]) == 0
    printed = capsys.readouterr().out
    assert "--- example" in printed and "[/INST]" in printed
    manifest = manifest_of(out)
    ids = {split: entry["ids"] for split, entry in manifest["splits"].items()}
    assert ids["train"] and len(set(sum(ids.values(), []))) == sum(len(v) for v in ids.values())  # disjoint
    assert manifest["task_spec"]["name"] == task and manifest["versions"]["transformers"]
    assert (out / "preview.jsonl").exists() and (out / "task.yaml").exists()
    from datasets import load_from_disk

    ds = load_from_disk(str(out))
    assert ds["train"]["id"] == ids["train"]
    assert {"id", "text", "prompt", "completion"} <= set(ds["train"].column_names)


def test_default_is_the_embedded_task_with_the_chat_template(in_tmp, capsys):
    assert run_script("preprocess", []) == 0
    folder = in_tmp / "data" / "drug_reviews-chat"
    manifest = manifest_of(folder)
    assert manifest["prompt"] == {"template": "chat", "with_definitions": True}
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 480, "validation": 120, "test": 379}
    assert "<|im_start|>assistant" in capsys.readouterr().out


def test_balanced_sampling_per_label_and_split(tmp_path):
    out = tmp_path / "ag"
    assert run_script("preprocess", ["--task", "ag_news", "--template", "alpaca", "--test_ratio", "0.2",
                                     "--balance_per_label", "300,50,50", "--output_dir", out]) == 0
    splits = manifest_of(out)["splits"]
    for split, n in (("train", 300), ("validation", 50), ("test", 50)):
        assert set(splits[split]["label_counts"].values()) == {n}, split


def test_merge_and_without_definitions(tmp_path):
    out = tmp_path / "p"
    assert run_script("preprocess", ["--task", "politosphere", "--merge", "supp_anti_oth", "--template",
                                     "llama2-chat", "--without_definitions", "--output_dir", out]) == 0
    manifest = manifest_of(out)
    assert manifest["labels"] == ["support gun", "anti gun", "other"] and manifest["merge"] == "supp_anti_oth"
    preview = [json.loads(l) for l in (out / "preview.jsonl").read_text().splitlines()]
    assert "Definitions" not in preview[0]["prompt"]


def test_adhoc_columns_and_a_new_task_from_one_yaml_file(tmp_path):
    data = tmp_path / "posts.csv"
    data.write_text("post,stance\n" + "".join(f"text number {i},{'pro' if i % 2 else 'con'}\n" for i in range(20)))
    out = tmp_path / "adhoc"
    assert run_script("preprocess", ["--data_path", data, "--text_column", "post", "--label_column", "stance",
                                     "--template", "alpaca", "--output_dir", out]) == 0
    assert manifest_of(out)["labels"] == ["con", "pro"]  # sorted for determinism
    spec = tmp_path / "mytask.yaml"
    spec.write_text(f"""
name: mytask
type: classification
data:
  splits: {{all: {{path: "{data}"}}}}
  text: "{{post}}"
  label_column: stance
labels: [{{name: pro, definition: for it}}, {{name: con, definition: against it}}]
prompt: {{system: "You judge stance.", instruction: "Answer {{label_list}}.", input: "Post: {{text}}"}}
""")
    out2 = tmp_path / "mine"
    assert run_script("preprocess", ["--task", spec, "--template", "llama2-chat", "--output_dir", out2]) == 0
    assert manifest_of(out2)["splits"]["validation"]["count"] == 4


@pytest.mark.parametrize("argv,message", [
    (["--data_path", "{csv}", "--text_column", "nope", "--label_column", "stance"], "no column 'nope'"),
    (["--task", "nope"], "unknown task"),
    (["--task", "politosphere", "--merge", "nope"], "unknown merge"),
    (["--task", "sst2", "--balance_per_label", "1,2"], "N_train,N_val,N_test"),
    (["--data_path", "{latin1}", "--text_column", "post", "--label_column", "stance"], "not UTF-8"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, argv, message):
    csv = tmp_path / "posts.csv"
    csv.write_text("post,stance\nhi,pro\n")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("post,stance\ncaf\xe9,pro\n".encode("latin-1"))
    out = tmp_path / "out"
    argv = [a.format(csv=csv, latin1=latin1) for a in argv] + ["--template", "alpaca", "--output_dir", out]
    assert run_script("preprocess", argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_existing_output_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["--task", "politosphere", "--template", "alpaca", "--output_dir", out]
    assert run_script("preprocess", args) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert run_script("preprocess", args) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert run_script("preprocess", args + ["--overwrite"]) == 0


def test_push_to_hub_fails_fast_without_token_or_network(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    out = tmp_path / "ds"
    args = ["--task", "politosphere", "--template", "alpaca", "--push_to_hub", "me/politosphere"]
    assert run_script("preprocess", args + ["--output_dir", out]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert (out / "manifest.json").exists()  # the local result is kept
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_for_test")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused at once
    start = time.perf_counter()
    assert run_script("preprocess", args + ["--output_dir", tmp_path / "ds2"]) == 2
    assert time.perf_counter() - start < 30
    assert "cannot be reached" in capsys.readouterr().err
    assert "hf_dummy_for_test" not in json.dumps(manifest_of(tmp_path / "ds2"))  # tokens never land in files


def test_caps_per_split_word_cut_and_resplit_leave_the_test_file_unread(tmp_path):
    out = tmp_path / "ds"
    assert run_script("preprocess", ["--task", "drug_reviews", "--template", "alpaca", "--output_dir", out,
                                     "--max_samples", "100,30,50", "--max_words", "12"]) == 0
    manifest = manifest_of(out)
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 100, "validation": 30, "test": 50}
    assert manifest["texts_cut_to_max_words"] > 100
    from datasets import load_from_disk

    assert max(len(t.split()) for t in load_from_disk(str(out))["train"]["text"]) == 12
    # --resplit: validation and test come from the 600 train reviews; the official test rows are not read.
    official = manifest["splits"]["test"]["ids"]
    assert run_script("preprocess", ["--task", "drug_reviews", "--template", "alpaca", "--output_dir", tmp_path / "r",
                                     "--resplit", "--test_ratio", "0.3"]) == 0
    splits = manifest_of(tmp_path / "r")["splits"]
    assert {k: v["count"] for k, v in splits.items()} == {"train": 300, "validation": 120, "test": 180}
    assert not set(splits["test"]["ids"]) & set(official)  # 600 = the train file's rows, split three ways
    assert len(set(sum((v["ids"] for v in splits.values()), []))) == 600


@pytest.mark.parametrize("flags", [["--max_samples", "1,2"], ["--max_samples", "x"], ["--max_words", "0"]])
def test_bad_caps_exit_2(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as stop:  # argparse's own exit
        run_script("preprocess", flags + ["--output_dir", tmp_path / "x"])
    assert stop.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
