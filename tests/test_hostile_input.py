"""Hostile and broken input, class by class: each is refused with exit status 2 and one line on
stderr that names the file and the fault, and leaves every input and earlier output byte-identical."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DATA, REPO, run_script


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


def refused(capsys, script, argv, message, folder):
    before = snapshot(folder)
    capsys.readouterr()
    assert run_script(script, argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert snapshot(folder) == before
    return err


def write_posts(path, n):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["post_id", "body"])
        writer.writerows([[f"p{i}", f"post number {i} about guns"] for i in range(n)])
    return path


# ---------------------------------------------------------------- data lost or replaced
def test_overwrite_never_replaces_the_input(in_tmp, capsys, pol_run):
    posts = write_posts(in_tmp / "posts.csv", 5)
    os.symlink(posts, in_tmp / "link.csv")
    for output in ("posts.csv", "link.csv"):
        refused(capsys, "evaluate", ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body",
                                     "--output", output, "--overwrite", "--quiet"], "is the input", in_tmp)
    gold = in_tmp / "gold.json"
    shutil.copy(DATA / "politosphere" / "daccord_yifei_v2_leo.json", gold)
    refused(capsys, "merge_labels", ["--input_file", gold, "--merge", "pol_unpol_oth", "--output_file", gold,
                                     "--overwrite"], "is the input", in_tmp)


def test_outputs_of_the_wrong_kind_are_refused_even_with_overwrite(in_tmp, capsys, pol_run):
    posts = write_posts(in_tmp / "posts.csv", 5)
    (in_tmp / "folder").mkdir()
    (in_tmp / "folder" / "keep.txt").write_text("mine")
    refused(capsys, "evaluate", ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body",
                                 "--output", "folder", "--overwrite", "--quiet"], "is a folder", in_tmp)
    (in_tmp / "file.txt").write_text("mine")
    refused(capsys, "export", ["--adapters_name", pol_run[-1], "--output_dir", "file.txt", "--overwrite"],
            "is a file", in_tmp)
    refused(capsys, "export", ["--adapters_name", pol_run[-1], "--output_dir", pol_run[-1].parent, "--overwrite"],
            "holds the input", pol_run[-1].parent)


def spec_with(tmp, data_extra="", **top):
    """A small valid task spec over a CSV, with top-level values replaced by YAML text and data
    keys added."""
    import yaml

    (tmp / "rows.csv").write_text("id,text,label\n" + "".join(f"{i},text {i},{'ab'[i % 2]}\n" for i in range(40)))
    spec = {"name": "t", "type": "classification",
            "data": {"splits": {"train": {"path": str(tmp / "rows.csv")}}, "text": "{text}", "label_column": "label",
                     **yaml.safe_load(data_extra or "{}")},
            "labels": ["a", "b"], "prompt": {"instruction": "Classify."}}
    spec.update({key: yaml.safe_load(value) for key, value in top.items()})
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_join_file_that_gives_an_id_twice_is_refused(in_tmp, capsys):
    import yaml

    (in_tmp / "texts.csv").write_text("id,text\n1,one\n2,two\n")
    (in_tmp / "labels.csv").write_text("id,label\n1,a\n2,b\n1,b\n")
    (in_tmp / "ids.txt").write_text("0 a\n1 b\n0 b\n")
    (in_tmp / "labels.txt").write_text("0\n1\n")
    for name, files, message in (
            ("join.yaml", {"labels_join": {"path": str(in_tmp / "labels.csv")}}, "both give a label for id '1'"),
            ("ids.yaml", {"labels_path": str(in_tmp / "labels.txt"), "label_ids": str(in_tmp / "ids.txt")},
             "gives label id 0 again")):
        spec = {"name": "j", "type": "classification", "labels": ["a", "b"], "prompt": {"instruction": "Classify."},
                "data": {"splits": {"train": {"path": str(in_tmp / "texts.csv"), **files}}, "id_column": "id",
                         "text": "{text}", "label_column": "label"}}
        (in_tmp / name).write_text(yaml.safe_dump(spec))
        refused(capsys, "preprocess", ["--task", name, "--output_dir", "out"], message, in_tmp)


# ---------------------------------------------------------------- one line, not a traceback
@pytest.mark.parametrize("change,message", [
    ({"data": "[1, 2]"}, "data must be a mapping"),
    ({"labels": "5"}, "labels must be a list, got a number"),
    ({"prompt": '"hello"'}, "prompt must be a mapping (key: value), got text"),
    ({"name": "[a, b]"}, "name must be text, got a list"),
    ({"balance_per_label": "many"}, "balance_per_label must be a number, got text"),
    ({"data_extra": "label_map: [pos, neg]"}, "data.label_map must be a mapping"),
    ({"data_extra": "keep_empty: 3"}, "data.keep_empty must be true or false"),
    ({"data_extra": "text_cleanup: squash_whitespace"}, "data.text_cleanup must be a list"),
    ({"data_extra": "bins: [1, 2]"}, "data.bins[0] must be a mapping"),
])
def test_task_values_of_the_wrong_type(in_tmp, capsys, change, message):
    spec = spec_with(in_tmp, change.pop("data_extra", ""), **change)
    refused(capsys, "preprocess", ["--task", spec, "--output_dir", "out"], message, in_tmp)


def test_splits_of_the_wrong_type(in_tmp, capsys):
    spec = spec_with(in_tmp, "splits: [a, b]")
    refused(capsys, "preprocess", ["--task", spec, "--output_dir", "out"], "data.splits must be a mapping", in_tmp)


def test_billion_laughs_is_refused_in_under_a_second(in_tmp, capsys):
    from annotune.base.cli import UserError
    from annotune.data.task import load_task

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    (in_tmp / "laughs.yaml").write_text("\n".join(lines) + "\n")
    assert len((in_tmp / "laughs.yaml").read_bytes()) < 600
    started = time.perf_counter()
    with pytest.raises(UserError, match="YAML aliases"):
        load_task(str(in_tmp / "laughs.yaml"))
    assert time.perf_counter() - started < 1.0
    refused(capsys, "preprocess", ["--task", "laughs.yaml", "--output_dir", "out"], "line 2: YAML aliases", in_tmp)
    (in_tmp / "big.yaml").write_text("name: big\n" + "# padding\n" * 120_000)
    refused(capsys, "preprocess", ["--task", "big.yaml", "--output_dir", "out"], "a task spec is at most", in_tmp)


@pytest.mark.parametrize("body,message", [
    ('{"text": "a", "label": "x"}\n5\n', "line 2 is a number, not a JSON object"),
    ('"just a string"\n', "line 1 is a string, not a JSON object"),
    ('[{"text": "a", "label": "x"}, [1]]', "entry 1 of the JSON list is a list"),
])
def test_json_rows_that_are_not_objects(in_tmp, capsys, body, message):
    path = in_tmp / ("rows.json" if body.startswith("[") else "rows.jsonl")
    path.write_text(body)
    refused(capsys, "preprocess", ["--data_path", path.name, "--text_column", "text", "--label_column", "label",
                                   "--output_dir", "out"], message, in_tmp)


def edit_info(folder, **changes):
    """annotune.json with keys changed (None: removed), as a hand edit or another tool might leave it."""
    info = json.loads((folder / "annotune.json").read_text())
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    (folder / "annotune.json").write_text(json.dumps(info))


def damaged_copies(adapter, tmp):
    """(name, folder, expected message) of an adapter damaged in each way."""
    cases = []
    for name, damage, message in [
        ("no_weights", lambda f: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors is missing"),
        ("cut_weights", lambda f: (f / "adapter_model.safetensors").write_bytes(
            (f / "adapter_model.safetensors").read_bytes()[:-100]), "adapter_model.safetensors is truncated"),
        ("garbage_weights", lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x01" * 50),
         "is not a safetensors file"),
        ("cut_info", lambda f: (f / "annotune.json").write_text((f / "annotune.json").read_text()[:200]),
         "annotune.json is not valid JSON"),
        ("list_info", lambda f: (f / "annotune.json").write_text("[1, 2]"), "annotune.json holds list"),
        ("no_labels", lambda f: edit_info(f, labels=None), "annotune.json lacks labels"),
        ("text_labels", lambda f: edit_info(f, labels="good,bad"), "annotune.json has labels of the wrong type"),
        ("no_config", lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json is missing"),
    ]:
        folder = tmp / name
        shutil.copytree(adapter, folder)
        damage(folder)
        cases.append((name, folder, message))
    return cases


def test_a_damaged_adapter_folder_is_named_in_every_script(in_tmp, capsys, pol_run):
    posts = write_posts(in_tmp / "posts.csv", 3)
    for name, folder, message in damaged_copies(pol_run[-1], in_tmp):
        for script, argv in (("evaluate", ["--adapters_name", folder, "--output_dir", "ev", "--quiet"]),
                             ("evaluate", ["--adapters_name", folder, "--predict_file", posts, "--text_column",
                                           "body", "--output", "o.csv", "--quiet"]),
                             ("export", ["--adapters_name", folder, "--output_dir", "exported"])):
            err = refused(capsys, script, argv, message, in_tmp)
            assert name in err  # the folder is named
    assert not (in_tmp / "ev").exists() and not (in_tmp / "o.csv").exists() and not (in_tmp / "exported").exists()


def test_a_checkpoint_torch_refuses_is_one_line(in_tmp, capsys, tiny_llama_dir):
    import torch

    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training", "--model_name",
            tiny_llama_dir, "--epoch", 1, "--quiet", "--eval_strategy", "no", "--output_dir", "run"]
    assert run_script("train", argv + ["--stop_after_steps", 2, "--save_every_steps", 2]) == 0
    checkpoint = next((in_tmp / "run" / "checkpoints").glob("checkpoint-*"))

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"payload": Payload()}, checkpoint / "optimizer.pt")
    err = refused(capsys, "train", argv + ["--resume_from_checkpoint"], "optimizer.pt is not part of a checkpoint this project wrote",
                  in_tmp / "run")
    assert "pickled code ran" not in err


def test_disk_full_while_annotating_is_one_line_and_the_rerun_resumes(in_tmp, capsys, pol_run, monkeypatch):
    posts = write_posts(in_tmp / "posts.csv", 12)
    argv = ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body", "--output", "out.csv",
            "--chunk_rows", 4, "--quiet"]
    from annotune.base import faults

    faults.reset()
    monkeypatch.setenv("ANNOTUNE_ENOSPC_AT", "annotate.write@2")
    capsys.readouterr()
    assert run_script("evaluate", argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no space left on device while writing a part of the labelled output" in err
    assert len(err.splitlines()) == 1
    parts = in_tmp / "out.csv.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["r000000000000-000000000004.csv", "settings.json"]
    assert not (in_tmp / "out.csv.lock").exists()
    monkeypatch.delenv("ANNOTUNE_ENOSPC_AT")
    assert run_script("evaluate", argv) == 0
    with open(in_tmp / "out.csv", newline="") as handle:
        assert [int(r["row"]) for r in csv.DictReader(handle)] == list(range(12))


def test_an_empty_corpus_leaves_nothing_that_blocks_the_rerun(in_tmp, capsys, pol_run):
    (in_tmp / "posts.csv").write_text("post_id,body\n")
    argv = ["--adapters_name", pol_run[-1], "--predict_file", "posts.csv", "--text_column", "body", "--output",
            "out.csv", "--quiet"]
    refused(capsys, "evaluate", argv, "has no rows", in_tmp)
    assert not (in_tmp / "out.csv.parts").exists() and not (in_tmp / "out.csv.lock").exists()
    write_posts(in_tmp / "posts.csv", 3)
    assert run_script("evaluate", argv) == 0


# ---------------------------------------------------------------- one labeller per output
@pytest.mark.slow
def test_a_second_labeller_on_the_same_output_is_refused_while_the_first_finishes(in_tmp, capsys, pol_run):
    posts = write_posts(in_tmp / "posts.csv", 24)
    argv = ["--adapters_name", str(pol_run[-1]), "--predict_file", str(posts), "--text_column", "body",
            "--output", "out.csv", "--chunk_rows", "8", "--quiet"]
    marker = in_tmp / "paused"
    env = dict(os.environ, PYTHONPATH=str(REPO), ANNOTUNE_PAUSE_AT=f"annotate.part:{marker}", OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, str(REPO / "evaluate.py"), *argv], cwd=in_tmp, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():  # the first run has written its first part and waits
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.1)
        holder = json.loads((in_tmp / "out.csv.lock").read_text())
        assert holder["pid"] == first.pid
        for extra in ([], ["--overwrite"]):
            err = refused(capsys, "evaluate", argv + extra, f"out.csv is being labelled by pid {first.pid}", in_tmp)
            assert "out.csv.lock" in err
    finally:
        marker.unlink(missing_ok=True)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    with open(in_tmp / "out.csv", newline="") as handle:
        assert [int(r["row"]) for r in csv.DictReader(handle)] == list(range(24))
    assert not (in_tmp / "out.csv.lock").exists() and not (in_tmp / "out.csv.parts").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(in_tmp, capsys, pol_run):
    import socket

    posts = write_posts(in_tmp / "posts.csv", 4)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (in_tmp / "out.csv.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body",
                                   "--output", "out.csv", "--quiet"]) == 0
    assert "removing a stale lock" in capsys.readouterr().out
    assert (in_tmp / "out.csv").exists() and not (in_tmp / "out.csv.lock").exists()
    (in_tmp / "o2.csv.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "today"}))
    refused(capsys, "evaluate", ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body",
                                 "--output", "o2.csv", "--quiet"], "is being labelled by pid 1 on elsewhere", in_tmp)


# ---------------------------------------------------------------- smaller ones
def test_published_outputs_take_the_users_umask(in_tmp):
    from annotune.base.files import atomic_write_json, publish_dir, staging_dir

    old = os.umask(0o022)
    try:
        atomic_write_json(in_tmp / "a.json", {"x": 1})
        staging = staging_dir(in_tmp / "pub")
        atomic_write_json(staging / "b.json", {"y": 2})
        publish_dir(staging, in_tmp / "pub")
    finally:
        os.umask(old)
    assert (in_tmp / "a.json").stat().st_mode & 0o777 == 0o644
    assert (in_tmp / "pub").stat().st_mode & 0o777 == 0o755
    assert (in_tmp / "pub" / "b.json").stat().st_mode & 0o777 == 0o644


def test_flags_that_do_not_apply_say_so(in_tmp, capsys, pol_run):
    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--task", "sst2", "--max_new_tokens", 5,
                                   "--output_dir", "ev", "--quiet", "--bootstrap", 10, "--max_samples", 8]) == 0
    err = capsys.readouterr().err
    assert "note: --task ignored: an adapter brings its own task" in err
    assert "note: --max_new_tokens ignored: they go with --mode generate" in err


def test_adapter_config_lists_its_modules_sorted(pol_run):
    config = json.loads((pol_run[-1] / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(config["target_modules"])


def test_disk_full_while_training_is_one_line_and_the_run_resumes(in_tmp, capsys, tiny_llama_dir, monkeypatch):
    from annotune.base import faults

    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training", "--model_name",
            tiny_llama_dir, "--epoch", 2, "--quiet", "--eval_strategy", "no", "--save_epochs", "1,2",
            "--max_train_samples", 32, "--output_dir", "run"]
    faults.reset()
    monkeypatch.setenv("ANNOTUNE_ENOSPC_AT", "train.save@2")  # the second epoch's adapter
    capsys.readouterr()
    assert run_script("train", argv) == 2
    err = capsys.readouterr().err.strip()
    assert "no space left on device" in err and "--resume_from_checkpoint" in err and len(err.splitlines()) == 1
    assert not [p for p in (in_tmp / "run").iterdir() if p.name.startswith(".")]  # no staging folder left
    monkeypatch.delenv("ANNOTUNE_ENOSPC_AT")
    assert run_script("train", argv + ["--resume_from_checkpoint"]) == 0
    assert (in_tmp / "run" / next(p.name for p in (in_tmp / "run").iterdir() if p.name.endswith("epoch2"))).is_dir()


# ---------------------------------------------------------------- second round (estimates aside: test_estimate_inputs.py)
def test_every_row_of_a_jsonl_input_is_checked_and_its_columns_are_the_union(in_tmp, capsys, pol_run):
    def write(rows):
        (in_tmp / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    base = [{"body": "guns a"}, {"body": "guns b"}]
    for key in ("prediction", "row", "prob_pol", "truncated"):
        write(base + [{"body": "guns c", key: "x"}])
        refused(capsys, "evaluate", ["--adapters_name", pol_run[-1], "--predict_file", "p.jsonl", "--text_column",
                                     "body", "--output", "o.csv", "--quiet"], f"row 2: column '{key}'", in_tmp)
    write(base + [{"body": "guns c", "source": "gab"}])
    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--predict_file", "p.jsonl", "--text_column", "body",
                                   "--output", "o.csv", "--quiet", "--chunk_rows", 1]) == 0
    with open(in_tmp / "o.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["row"] for r in rows] == ["0", "1", "2"] and [r["source"] for r in rows] == ["", "", "gab"]


def test_an_adapter_whose_tokenizer_changed_is_refused_and_an_older_one_uses_its_base(in_tmp, capsys, pol_run):
    adapter = in_tmp / "ad"
    shutil.copytree(pol_run[-1], adapter)
    recorded = json.loads((adapter / "annotune.json").read_text())["tokenizer_files"]
    assert "tokenizer_config.json" in recorded and all(len(v) == 64 for v in recorded.values())
    posts = write_posts(in_tmp / "posts.csv", 6)
    label = ["--adapters_name", adapter, "--predict_file", posts, "--text_column", "body", "--output", "o.csv",
             "--quiet", "--chunk_rows", 2]
    assert run_script("evaluate", label + ["--stop_after_chunks", 1]) == 0  # a labelling left half done
    config = (adapter / "tokenizer_config.json").read_text()
    (adapter / "tokenizer_config.json").unlink()
    for script, argv in (("evaluate", label), ("export", ["--adapters_name", adapter, "--output_dir", "merged"])):
        refused(capsys, script, argv, "tokenizer file tokenizer_config.json is missing", in_tmp)
    (adapter / "tokenizer_config.json").write_text(config + " ")
    refused(capsys, "evaluate", label, "tokenizer file tokenizer_config.json differs", in_tmp)
    from annotune.model.adapters import TOKENIZER_FILES

    extra = next(name for name in TOKENIZER_FILES if name not in recorded)
    (adapter / extra).write_text("{}")
    (adapter / "tokenizer_config.json").write_text(config)
    refused(capsys, "evaluate", label, f"tokenizer file {extra} was added", in_tmp)
    (adapter / extra).unlink()
    # The same files, recorded anew (a tokenizer that labels differently): the resume's fingerprint differs.
    edited = json.loads(config)
    edited["model_max_length"] = 77
    (adapter / "tokenizer_config.json").write_text(json.dumps(edited))
    info = json.loads((adapter / "annotune.json").read_text())
    info["tokenizer_files"]["tokenizer_config.json"] = hashlib.sha256(
        (adapter / "tokenizer_config.json").read_bytes()).hexdigest()
    (adapter / "annotune.json").write_text(json.dumps(info))
    refused(capsys, "evaluate", label, "tokenizer_sha256", in_tmp)
    # An adapter older than the record: its base's tokenizer, with a note, in evaluate.py and export.py alike.
    del info["tokenizer_files"]
    (adapter / "annotune.json").write_text(json.dumps(info))
    for name in recorded:
        (adapter / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert run_script("evaluate", label + ["--output", "fresh.csv"]) == 0
    assert "the base model" in capsys.readouterr().err
    assert run_script("export", ["--adapters_name", adapter, "--output_dir", "merged"]) == 0
    assert "the base model" in capsys.readouterr().err


def test_the_labelling_fingerprint_holds_the_tokenizer(smol_tok):
    from annotune.model.models import tokenizer_sha256

    first = tokenizer_sha256(smol_tok)
    assert tokenizer_sha256(smol_tok) == first
    eos = smol_tok.eos_token
    try:
        smol_tok.eos_token = smol_tok.unk_token or "<|endoftext|>"
        assert tokenizer_sha256(smol_tok) != first
    finally:
        smol_tok.eos_token = eos
    side = smol_tok.padding_side
    try:
        smol_tok.padding_side = "left" if side == "right" else "right"
        assert tokenizer_sha256(smol_tok) != first
    finally:
        smol_tok.padding_side = side


def _take_lock(output, pause_marker, held_marker, release_marker, code):
    """A labeller's lock, in its own process: exit 0 after holding it until release_marker is gone,
    3 when refused."""
    from annotune.base import faults
    from annotune.base.cli import UserError
    from annotune.labelling.corpus import PartStore

    faults.reset()
    if pause_marker:
        os.environ["ANNOTUNE_PAUSE_AT"] = f"lock.opened:{pause_marker}"
    else:
        os.environ.pop("ANNOTUNE_PAUSE_AT", None)
    store = PartStore(Path(output), {})
    try:
        store.lock()
    except UserError:
        os._exit(3)
    with open(held_marker, "a") as handle:
        handle.write(f"{code}\n")
    while os.path.exists(release_marker):
        time.sleep(0.01)
    store.unlock()
    os._exit(0)


def _stale_lock(path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    Path(path).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))


def _wait_for(path, seconds=30):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_stale_lock_is_taken_over_by_one_process_whatever_the_interleaving(tmp_path):
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    output, held = tmp_path / "out.csv", tmp_path / "held"
    _stale_lock(tmp_path / "out.csv.lock")
    release_b, release_c = tmp_path / "release_b", tmp_path / "release_c"
    release_b.touch()
    release_c.touch()
    # A opens the stale lock file, then pauses before it tries to take it.
    a = fork.Process(target=_take_lock, args=(output, tmp_path / "a.paused", held, tmp_path / "none", "a"))
    a.start()
    _wait_for(tmp_path / "a.paused")
    # B takes the stale lock over, labels, and finishes (unlinking the file A has open); C takes a fresh one.
    b = fork.Process(target=_take_lock, args=(output, None, held, release_b, "b"))
    b.start()
    _wait_for(held)
    release_b.unlink()
    b.join(30)
    c = fork.Process(target=_take_lock, args=(output, None, held, release_c, "c"))
    c.start()
    deadline = time.time() + 30
    while held.read_text().split() != ["b", "c"]:
        assert time.time() < deadline
        time.sleep(0.01)
    (tmp_path / "a.paused").unlink()  # A goes on: the file it opened is no longer the lock
    a.join(30)
    assert a.exitcode == 3 and b.exitcode == 0
    release_c.unlink()
    c.join(30)
    assert c.exitcode == 0 and held.read_text().split() == ["b", "c"]
    assert not (tmp_path / "out.csv.lock").exists()


def _racer(k, root, trials, barrier, results):
    """One of the racing labellers: in each trial, all take the same stale lock at once; the winner
    holds it until every racer has tried."""
    from annotune.base.cli import UserError
    from annotune.labelling.corpus import PartStore

    os.environ.pop("ANNOTUNE_PAUSE_AT", None)
    for trial in range(trials):
        store = PartStore(Path(root) / f"t{trial}" / "out.csv", {})
        barrier.wait()
        try:
            store.lock()
            got = True
        except UserError:
            got = False
        results.put((trial, k, got))
        barrier.wait()
        if got:
            store.unlock()
    results.close()
    results.join_thread()  # the queue's feeder thread flushes before the process ends
    os._exit(0)


def test_racing_for_a_stale_lock_leaves_exactly_one_holder(tmp_path):
    import multiprocessing
    import socket

    fork, trials, racers = multiprocessing.get_context("fork"), 50, 4
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for trial in range(trials):  # a stale lock of a dead process on this host, in each trial's folder
        (tmp_path / f"t{trial}").mkdir()
        (tmp_path / f"t{trial}" / "out.csv.lock").write_text(
            json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    barrier, results = fork.Barrier(racers), fork.Queue()
    workers = [fork.Process(target=_racer, args=(k, tmp_path, trials, barrier, results)) for k in range(racers)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=60) for _ in range(trials * racers)]
    for w in workers:
        w.join(60)
    holders = [sum(got for t, _, got in outcomes if t == trial) for trial in range(trials)]
    assert holders == [1] * trials


@pytest.mark.parametrize("make", ["dev_zero", "fifo", "deep"])
def test_a_task_spec_that_never_ends_or_nests_without_end_is_one_line(tmp_path, make):
    spec = tmp_path / "t.yaml"
    if make == "dev_zero":
        os.symlink("/dev/zero", spec)
        message = "is not a regular file"
    elif make == "fifo":
        os.mkfifo(spec)
        message = "is not a regular file"
    else:
        spec.write_text("name: x\nlabels: " + "[" * 20000 + "]" * 20000 + "\n")
        message = "nested deeper than 100 levels"
    done = subprocess.run([sys.executable, str(REPO / "preprocess.py"), "--task", str(spec), "--output_dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_json_rows_nested_without_end_are_one_line(tmp_path):
    from annotune.base.cli import UserError
    from annotune.base.tables import read_table

    (tmp_path / "deep.jsonl").write_text('{"text": ' + "[" * 20000 + "]" * 20000 + "}\n")
    with pytest.raises(UserError, match="nested deeper than 100 levels"):
        read_table(str(tmp_path / "deep.jsonl"))


def test_a_damaged_hash_cache_is_rebuilt_with_a_note(tmp_path, monkeypatch, capsys, pol_run):
    from annotune.model.models import weights_sha256

    monkeypatch.setenv("ANNOTUNE_CACHE", str(tmp_path))
    good = weights_sha256(pol_run[-1])
    memo = tmp_path / "weights_sha256.json"
    memo.write_text(memo.read_text()[: len(memo.read_text()) // 2])  # half written
    capsys.readouterr()
    assert weights_sha256(pol_run[-1]) == good
    assert "is damaged; rebuilding it" in capsys.readouterr().err
    assert json.loads(memo.read_text())  # whole again
    assert weights_sha256(pol_run[-1]) == good and "damaged" not in capsys.readouterr().err


def test_files_a_library_writes_private_are_published_with_the_umask(in_tmp):
    from annotune.base.files import publish_dir, staging_dir

    old = os.umask(0o022)
    try:
        staging = staging_dir(in_tmp / "model")
        fd = os.open(staging / "model.safetensors", os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors does
        os.close(fd)
        publish_dir(staging, in_tmp / "model")
    finally:
        os.umask(old)
    assert (in_tmp / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_fifo_given_as_data_sheet_or_corpus_is_refused_without_waiting(tmp_path):
    from test_estimates import fill, write_corpus

    gold, _ = write_corpus(tmp_path / "c.csv", size=200)
    assert subprocess.run([sys.executable, str(REPO / "sample.py"), "--corpus", "c.csv", "--n", "20"], cwd=tmp_path,
                          capture_output=True, timeout=120).returncode == 0
    fill(tmp_path / "c.sheet.csv", gold, tmp_path / "s.csv")
    os.mkfifo(tmp_path / "pipe.csv")
    runs = {
        "is not a regular file": [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                  "from annotune.base.cli import run_cli; from annotune.base.tables import read_table; "
                                  "sys.exit(run_cli(lambda argv: len(read_table('pipe.csv')) and 0, []))", str(REPO)],
        "--sheet pipe.csv is not a regular file": [sys.executable, str(REPO / "estimate.py"), "--corpus", "c.csv",
                                                   "--sheet", "pipe.csv", "--design", "c.design.json"],
        "--corpus pipe.csv is not a regular file": [sys.executable, str(REPO / "sample.py"), "--corpus", "pipe.csv",
                                                    "--n", "5"],
    }
    for message, argv in runs.items():
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
            done.stderr


def test_an_output_under_a_file_is_one_line_in_evaluate(in_tmp, capsys, pol_run):
    posts = write_posts(in_tmp / "posts.csv", 3)
    (in_tmp / "file.txt").write_text("mine")
    refused(capsys, "evaluate", ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body",
                                 "--output", "file.txt/o.csv", "--quiet"], "file.txt is a file, not a folder", in_tmp)
    refused(capsys, "evaluate", ["--adapters_name", pol_run[-1], "--output_dir", "file.txt/ev", "--quiet"],
            "file.txt is a file, not a folder", in_tmp)
    refused(capsys, "export", ["--adapters_name", pol_run[-1], "--output_dir", "file.txt/m"],
            "file.txt is a file, not a folder", in_tmp)


def test_a_lock_path_that_is_a_link_or_a_folder_is_one_line_and_nothing_is_truncated(tmp_path):
    from annotune.base.cli import UserError
    from annotune.labelling.corpus import PartStore

    (tmp_path / "mine.txt").write_text("keep me")
    os.symlink(tmp_path / "mine.txt", tmp_path / "out.csv.lock")
    with pytest.raises(UserError, match="cannot open the lock file"):
        PartStore(tmp_path / "out.csv", {}).lock()
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    (tmp_path / "o2.csv.lock").mkdir()
    with pytest.raises(UserError, match="Is a directory"):
        PartStore(tmp_path / "o2.csv", {}).lock()
