"""Fault injection: train.py killed at chosen points (annotune/base/faults.py: the process ends
with status 137 at once, as kill -9) and resumed must end exactly where the uninterrupted run ends:
the same adapters, bit for bit, and the same evaluation history; resumes with other arguments, bad
values and non-finite training are refused with one line and exit 2."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def train_cli(cwd, argv, crash=None):
    """train.py in its own process (a real os._exit at the crash point); crash = 'point@n' (killed
    there) or 'sigint:point@n' (Ctrl-C there). Returns (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for name in ("ANNOTUNE_CRASH_AT", "ANNOTUNE_SIGINT_AT"):
        env.pop(name, None)
    if crash:
        name, _, point = crash.rpartition(":")
        env["ANNOTUNE_SIGINT_AT" if name == "sigint" else "ANNOTUNE_CRASH_AT"] = point
    out = subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, argv)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    return out.returncode, out.stdout, out.stderr


def train_here(cwd, argv, crash=None, monkeypatch=None):
    """The same in this process (no interpreter start-up: seconds instead of tens of seconds); a kill
    is faults.SimulatedKill, reported as status 137 (the staging folder a real kill leaves behind is
    the subprocess case's job)."""
    import contextlib
    import io

    from annotune.base import faults
    from conftest import run_script

    faults.reset()
    faults.IN_PROCESS = True
    saved = {k: os.environ.pop(k, None) for k in ("ANNOTUNE_CRASH_AT", "ANNOTUNE_SIGINT_AT")}
    if crash:
        name, _, point = crash.rpartition(":")
        os.environ["ANNOTUNE_SIGINT_AT" if name == "sigint" else "ANNOTUNE_CRASH_AT"] = point
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run_script("train", argv)
            except faults.SimulatedKill:
                code = 137
    finally:
        os.chdir(here)
        faults.IN_PROCESS = False
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def adapter_files(run):
    """{adapter name: bytes of its weights} of a run folder."""
    return {p.name: (p / "adapter_model.safetensors").read_bytes() for p in sorted(run.iterdir())
            if (p / "annotune.json").exists()}


def evals(run):
    rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines() if l.strip()]
    return [(r["epoch"], r["step"], r.get("macro_f1")) for r in rows if r["type"] == "eval"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama_dir):
    """The uninterrupted runs every resumed run is compared with."""
    folder = tmp_path_factory.mktemp("faults")
    epochs = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
              "--model_name", tiny_llama_dir, "--template",
              "alpaca", "--epoch", 2, "--max_eval_samples", 6, "--quiet", "--learning_rate", "3e-3", "--save_epochs", "all",
              "--max_train_samples", 32]  # 4 steps an epoch
    steps = epochs[:10] + ["--stop_condition", "steps", "--steps", 2, "--quiet", "--max_eval_samples", 6,
                          "--max_train_samples", 32]
    for name, argv in (("epochs", epochs), ("steps", steps)):
        code, _, err = train_here(folder, argv + ["--output_dir", f"ref-{name}"])
        assert code == 0, err[-2000:]
    return folder, {"epochs": epochs, "steps": steps}


@pytest.mark.parametrize("schedule,crash", [
    ("epochs", "train.step@6"),         # mid-epoch 2, last checkpoint at the end of epoch 1
    ("epochs", "train.evaluate@2"),     # during the final epoch's validation (case 3)
    ("epochs", "train.save@2"),         # the final adapter staged, not published (case 3)
    ("epochs", "train.after_save@1"),   # epoch 1 published, no checkpoint yet (case 9's trap)
    ("epochs", "train.finish@1"),       # the last checkpoint written, the summary not
    ("steps", "train.save@1"),          # --steps 2: killed while saving (case 4)
    ("steps", "train.finish@1"),        # --steps 2: checkpoint written, summary not (case 4)
    ("epochs", "sigint:train.step@2"),  # Ctrl-C mid-epoch 1: a checkpoint is written (case 9)
    ("epochs", "sigint:train.step@4"),  # Ctrl-C at epoch 1's last step: its evaluation and adapter first
])
def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(reference, schedule, crash):
    folder, argv = reference
    run = folder / f"{schedule}-{crash.replace('@', '-').replace(':', '-')}"
    code, out, err = train_here(folder, argv[schedule] + ["--output_dir", run.name], crash=crash)
    assert code == (130 if crash.startswith("sigint") else 137), err[-2000:]
    if crash.startswith("sigint"):
        assert "with a checkpoint" in out and list((run / "checkpoints").glob("checkpoint-*"))
    code, out, err = train_here(folder, argv[schedule] + ["--output_dir", run.name, "--resume_from_checkpoint"])
    assert code == 0, err[-2000:]
    assert_same_run(run, folder / f"ref-{schedule}")
    if crash.endswith("finish@1"):  # resuming a finished run trains nothing more (case 4: one step past --steps)
        code, out, _ = train_here(folder, argv[schedule] + ["--output_dir", run.name, "--resume_from_checkpoint"])
        assert code == 0 and "nothing to resume" in out
        assert adapter_files(run) == adapter_files(folder / f"ref-{schedule}")


def assert_same_run(run, ref):
    assert adapter_files(run) == adapter_files(ref)
    assert evals(run) == evals(ref)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staging folder left
    steps = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines() if '"step"' in l]
    assert steps == [json.loads(l)["step"] for l in (ref / "log.jsonl").read_text().splitlines() if '"step"' in l]


@pytest.mark.slow
def test_a_real_kill_while_saving_leaves_a_staging_folder_that_resume_clears(reference):
    folder, argv = reference
    code, _, err = train_cli(folder, argv["epochs"] + ["--output_dir", "killed"], crash="train.save@2")
    assert code == 137, err[-2000:]
    assert [p for p in (folder / "killed").iterdir() if p.name.startswith(".")]  # as kill -9 leaves it
    code, _, err = train_cli(folder, argv["epochs"] + ["--output_dir", "killed", "--resume_from_checkpoint"])
    assert code == 0, err[-2000:]
    assert_same_run(folder / "killed", folder / "ref-epochs")


def test_resume_with_other_arguments_is_refused_and_changes_nothing(reference):
    folder, argv = reference
    before = (folder / "ref-epochs" / "manifest.json").read_bytes()
    for other in (["--learning_rate", "1e-3"], ["--merge", "supp_anti_oth"], ["--epoch", 3]):
        changed = list(argv["epochs"])
        for flag, value in zip(other[::2], other[1::2]):
            if flag in changed:
                changed[changed.index(flag) + 1] = value
        code, _, err = train_here(folder, changed + ["--output_dir", "ref-epochs", "--resume_from_checkpoint"])
        assert code == 2 and len(err.strip().splitlines()) == 1, err[-2000:]
        assert "other arguments" in err and other[0] in err
    assert (folder / "ref-epochs" / "manifest.json").read_bytes() == before
    code, out, _ = train_here(folder, argv["epochs"] + ["--output_dir", "ref-epochs", "--resume_from_checkpoint", "--quiet"])
    assert code == 0 and "nothing to resume" in out


@pytest.mark.parametrize("flags,message", [
    (["--epoch", 0], "--epochs 0: must be at least 1"), (["--epoch", -1], "must be at least 1"),
    (["--learning_rate", "nan"], "--learning_rate nan"), (["--learning_rate", "inf"], "--learning_rate inf"),
    (["--lora_dropout", "1.5"], "in [0, 1)"), (["--max_eval_samples", -1], "at least 0"),
])
def test_bad_values_are_one_line_and_exit_2(in_tmp, tiny_llama_dir, capsys, flags, message):
    from conftest import run_script

    with pytest.raises(SystemExit) as stop:
        run_script("train", ["--task", "politosphere", "--model_name", tiny_llama_dir, "--output_dir", "o"] + flags)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (in_tmp / "o").exists()


def test_refused_runs_leave_nothing_that_blocks_the_rerun(in_tmp, tiny_llama_dir, capsys):
    from conftest import run_script

    common = ["--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca", "--quiet",
              "--max_train_samples", 16, "--eval_strategy", "no", "--epoch", 3]
    (in_tmp / "afile").write_text("x")
    assert run_script("train", common + ["--output_dir", "afile"]) == 2
    assert "is a file" in capsys.readouterr().err
    # Refused after the model is built (the weights list has the wrong length): no folder, no manifest.
    assert run_script("train", common + ["--class_weights", "1,2", "--output_dir", "o"]) == 2
    assert not (in_tmp / "o").exists() or not any((in_tmp / "o").iterdir())
    assert run_script("train", common + ["--output_dir", "o"]) == 0
    # A torn last line in log.jsonl (killed mid-append) does not stop a resume.
    assert run_script("train", common + ["--output_dir", "t", "--stop_after_steps", 1]) == 0
    with open(in_tmp / "t" / "log.jsonl", "a") as handle:
        handle.write('{"type": "step", "st')
    assert run_script("train", common + ["--output_dir", "t", "--resume_from_checkpoint"]) == 0


def test_non_finite_training_stops_with_one_line_and_no_adapter(in_tmp, tiny_llama_dir, capsys):
    from conftest import run_script

    argv = ["--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca", "--quiet",
            "--learning_rate", "1e30", "--max_grad_norm", 0, "--max_eval_samples", 6, "--output_dir", "nan"]
    assert run_script("train", argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("training loss is" in err or "NaN or inf" in err), err
    assert not [p for p in (in_tmp / "nan").iterdir() if (p / "annotune.json").exists()]


@pytest.mark.parametrize("flags", [["--dataset_name", "nobody/no-data"], ["--model_name", "nobody/no-model"]])
def test_unreachable_hub_is_one_line_without_retries(in_tmp, tiny_llama_dir, capsys, monkeypatch, flags):
    import time

    import annotune.base.hub
    from conftest import run_script

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(annotune.base.hub, "hub_reachable", lambda timeout=5.0: False)
    argv = ["--model_name", tiny_llama_dir, "--output_dir", "o", "--quiet"] + flags
    start = time.time()
    assert run_script("train", argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be reached" in err and "HF_HUB_OFFLINE" in err
    assert time.time() - start < 20 and not (in_tmp / "o").exists()


def test_a_text_longer_than_the_context_is_cut_flagged_and_labelled(in_tmp, tiny_llama_dir, monkeypatch):
    """Case 12: a pasted article is labelled from its beginning, flagged, and never crashes."""
    import annotune.labelling.annotator as annotator_module
    from annotune.labelling.annotator import load_annotator
    from annotune.labelling.contract import of_spec
    from annotune.data.task import load_task

    monkeypatch.setattr(annotator_module, "MAX_PROMPT_TOKENS", 200)
    ann = load_annotator(of_spec(load_task("politosphere", "pol_unpol_oth"),
                                 {"template": "alpaca", "with_definitions": False}), base_model=tiny_llama_dir)
    rows = [{"id": "short", "text": "guns are fine"}, {"id": "long", "text": " ".join(["word"] * 5000)}]
    for mode in ("score", "generate"):
        preds = ann.predict(rows, mode, max_new_tokens=4)
        assert [bool(p.get("truncated")) for p in preds] == [False, True]
        assert all(p["prediction"] for p in preds)
    prompts, cut = ann.fit_prompts(rows, ann.max_label_tokens() + 1)
    from annotune.data.prompts import encode_prompt

    assert cut == [False, True] and len(encode_prompt(ann.tokenizer, prompts[1])) <= 200 - ann.max_label_tokens() - 1
    assert prompts[1].count("word") > 10  # labelled from its beginning, not emptied


def test_evaluation_refuses_non_finite_scores_and_bad_values(in_tmp, tiny_llama_dir, capsys):
    """Case 6 (evaluation side) and case 7 (evaluate.py --max_samples -1)."""
    import torch

    from annotune.labelling.annotator import load_annotator
    from annotune.labelling.contract import of_spec
    from annotune.base.cli import UserError
    from annotune.data.task import load_task
    from conftest import run_script

    ann = load_annotator(of_spec(load_task("politosphere", "pol_unpol_oth"),
                                 {"template": "alpaca", "with_definitions": False}), base_model=tiny_llama_dir)
    with torch.no_grad():
        next(ann.model.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="NaN or inf label scores"):
        ann.predict([{"id": "1", "text": "guns"}], "score")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_script("evaluate", ["--base_only", "--model_name", tiny_llama_dir, "--max_samples", -1])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "--max_samples -1" in err and len(err.splitlines()) == 1
