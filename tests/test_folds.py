"""K-fold training and its use (train.py --folds, evaluate.py --ensemble, estimate.py --crossfit) on a
tiny model: every labelled row out-of-fold once, no fold model ever predicting a row it trained or
validated on, a killed run and folds run one by one giving the same out-of-fold file, the ensemble's
corpus columns, cross-fitted estimates, and the refusals."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_script
from test_train import write_colour_task

FOLD_FLAGS = ["--folds", 3, "--epoch", 1, "--quiet", "--learning_rate", "3e-3", "--lora_r", 4]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A preprocess.py folder of 100 colour rows (train, validation, test: 20 rows left alone)."""
    root = tmp_path_factory.mktemp("colours")
    data = write_colour_task(root, n=100, seed=3)
    assert run_script("preprocess", ["--data_path", data, "--text_column", "text", "--label_column", "label",
                                     "--template", "llama2-chat", "--test_ratio", 0.2, "--output_dir", root / "ds"]) == 0
    return root


@pytest.fixture(scope="module")
def kfold(colours, tiny_llama_dir):
    run = colours / "kfold"
    assert run_script("train", ["--dataset_name", colours / "ds", "--model_name", tiny_llama_dir, "--output_dir", run,
                                *FOLD_FLAGS]) == 0
    return run


def labelled_ids(ds) -> tuple:
    from annotune.data.examples import load_dataset_folder

    splits = load_dataset_folder(ds)[0]
    return [r["id"] for name in ("train", "validation") for r in splits.get(name, [])], [r["id"] for r in splits["test"]]


def test_every_labelled_row_is_predicted_once_by_a_model_that_never_saw_it(kfold, colours):
    labelled, test = labelled_ids(colours / "ds")
    oof = pd.read_csv(kfold / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(labelled) and len(test) == 20 and not set(test) & set(oof["id"])
    assert np.allclose(oof[[c for c in oof if c.startswith("prob_")]].sum(axis=1), 1, atol=1e-5)
    record = json.loads((kfold / "folds.json").read_text())
    assert record["folds_k"] == 3 and len(record["fingerprint"]) == 64 and record["manifest"]["versions"]
    for fold, prov in zip(record["folds"], record["provenance"]):
        held = set(fold["heldout_ids"])
        assert set(oof.loc[oof["fold"] == fold["fold"], "id"]) == held
        assert prov["trained_on"] and not held & set(prov["trained_on"]) and not held & set(prov["validated_on"])
        assert set(prov["validated_on"]) <= set(fold["validation_ids"])
    metrics = json.loads((kfold / "oof_metrics.json").read_text())
    assert metrics["n"] == len(labelled) and "not of the 3 models' ensemble" in metrics["what"]
    assert 0 <= metrics["macro_f1"] <= 1 and len(metrics["ci95"]["macro_f1"]) == 2


def test_a_fold_adapter_is_an_ordinary_adapter(kfold, tmp_path):
    from annotune.training.folds import kept_adapter

    adapter = kept_adapter(kfold / "fold_0" / "run")
    assert run_script("evaluate", ["--adapters_name", adapter, "--split", "test", "--baseline", "none",
                                   "--bootstrap", 0, "--quiet", "--output_dir", tmp_path / "e"]) == 0
    metrics = json.loads(next((tmp_path / "e").rglob("metrics.json")).read_text())
    assert metrics["n"] == len(json.loads((kfold / "folds.json").read_text())["folds"][0]["heldout_ids"])


def test_folds_run_one_by_one_and_a_killed_fold_give_the_same_oof_file(kfold, colours, tiny_llama_dir, capsys):
    run = colours / "again"
    common = ["--dataset_name", colours / "ds", "--model_name", tiny_llama_dir, "--output_dir", run, *FOLD_FLAGS]
    assert run_script("train", common + ["--fold", 1]) == 0  # on another machine, say
    assert not (run / "oof.csv").exists() and "not done yet" in capsys.readouterr().out
    assert run_script("train", common + ["--stop_after_steps", 2]) == 0  # fold 0 killed after 2 steps
    assert not (run / "oof.csv").exists() and "give the same command again" in capsys.readouterr().out
    assert run_script("train", common) == 0  # fold 0 resumes, fold 1 is kept, fold 2 trains, all gathered
    ours, first = pd.read_csv(run / "oof.csv"), pd.read_csv(kfold / "oof.csv")
    pd.testing.assert_frame_equal(ours, first, check_exact=False, atol=1e-6)


@pytest.mark.parametrize("extra, says", [
    (["--folds", 1], "K >= 2"),
    (["--fold", 0], "--fold k goes with --folds K"),
    (["--folds", 3, "--fold", 3], "folds are numbered 0 to 2"),
    (["--folds", 3, "--max_train_samples", 10], "cannot go with --folds"),
    (["--folds", 3, "--resume_from_checkpoint"], "cannot go with --folds"),
    (["--folds", 3, "--fold_validation_share", 0.95], "a share in (0, 0.9)"),
])
def test_fold_flags_that_cannot_apply_are_refused_in_one_line(colours, tiny_llama_dir, tmp_path, capsys, extra, says):
    with pytest.raises(SystemExit) as stop:
        run_script("train", ["--dataset_name", colours / "ds", "--model_name", tiny_llama_dir,
                             "--output_dir", tmp_path / "r", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and says in err[-1] and not (tmp_path / "r").exists()


def test_a_k_fold_folder_is_not_resumed_with_another_k(kfold, colours, tiny_llama_dir, capsys):
    before = (kfold / "folds.json").read_bytes()
    argv = ["--dataset_name", colours / "ds", "--model_name", tiny_llama_dir, "--output_dir", kfold, "--folds", 4]
    assert run_script("train", argv) == 2
    assert "another --output_dir" in capsys.readouterr().err and (kfold / "folds.json").read_bytes() == before
    assert not (kfold / "fold_3").exists()


def corpus_of(colours, kfold, extra_rows=40):
    """The labelled rows (by id) and others, shuffled: a corpus the labelled set was drawn from."""
    oof = pd.read_csv(kfold / "oof.csv", dtype={"id": str})
    other = pd.read_csv(colours / "colours.csv").sample(extra_rows, random_state=0)
    table = pd.concat([oof[["id", "text"]], pd.DataFrame({"id": [f"x{i}" for i in range(extra_rows)],
                                                          "text": other["text"]})]).sample(frac=1, random_state=1)
    path = colours / f"corpus{extra_rows}.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def labelled_corpus(kfold, colours):
    """The corpus labelled by the fold models' ensemble, stopped after one chunk and resumed."""
    corpus, out = corpus_of(colours, kfold), colours / "labelled.csv"
    argv = ["--ensemble", kfold, "--predict_file", corpus, "--output", out, "--quiet", "--chunk_rows", 16]
    assert run_script("evaluate", argv + ["--stop_after_chunks", 1]) == 0 and not out.exists()
    assert run_script("evaluate", argv) == 0
    return out


def test_the_ensemble_labels_a_corpus_and_estimate_cross_fits_on_it(kfold, colours, labelled_corpus, tmp_path):
    table = pd.read_csv(labelled_corpus, dtype={"id": str})
    labels = json.loads((kfold / "folds.json").read_text())["labels"]
    folds = np.stack([table[[f"fold{k}_prob_{l}" for l in labels]].to_numpy() for k in range(3)])
    assert np.allclose(folds.mean(axis=0), table[[f"prob_{l}" for l in labels]], atol=2e-6)  # argmax: the mean
    assert list(table.columns[:3]) == ["row", "id", "text"] and not (colours / "labelled.csv.folds").exists()
    assert run_script("estimate", ["--corpus", labelled_corpus, "--crossfit", kfold, "--id_column", "id",
                                   "--output_dir", tmp_path / "est"]) == 0
    record = json.loads((tmp_path / "est" / "estimates.json").read_text())
    n = len(labelled_ids(colours / "ds")[0])
    assert record["labelled"] == n and record["corpus_rows"] == n + 40 and record["strategy"] == "cross-fitted"
    assert record["crossfit"]["fingerprint"] == json.loads((kfold / "folds.json").read_text())["fingerprint"]
    assert set(record["crossfit"]["spread"]) == set(labels)
    assert "Cross-fitted" in (tmp_path / "est" / "estimates.md").read_text()


def test_cross_fitted_refusals_exit_2_in_one_line_and_write_nothing(kfold, colours, labelled_corpus, tmp_path, capsys):
    out = labelled_corpus
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    doubled = tmp_path / "doubled.csv"
    labelled_row = table[~table["id"].str.startswith("x")].head(1)
    pd.concat([table, labelled_row.assign(row="9999")]).to_csv(doubled, index=False)
    plain = tmp_path / "plain.csv"
    table[[c for c in table if not c.startswith("fold")]].to_csv(plain, index=False)
    cases = [([out, "--crossfit", kfold, "--id_column", "nope"], "has no such column"),
             ([doubled, "--crossfit", kfold, "--id_column", "id"], "matches 2 rows"),
             ([plain, "--crossfit", kfold, "--id_column", "id"], "no fold<k>_prob_<label> columns"),
             ([out, "--crossfit", colours / "ds", "--id_column", "id"], "no folds.json")]
    for argv, says in cases:
        assert run_script("estimate", ["--corpus", *argv, "--output_dir", tmp_path / "est"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and not (tmp_path / "est").exists()
    with pytest.raises(SystemExit) as stop:
        run_script("estimate", ["--corpus", out, "--crossfit", kfold, "--id_column", "id", "--sheet", out])
    assert stop.value.code == 2


def fake_kfold(folder, rng, balanced: bool, size=3000, n=400, k=5):
    """A gathered K-fold run and its ensemble-labelled corpus without a model: fold models that score
    every row from one feature, the labelled rows drawn uniformly or half per label from a corpus
    with 15% positives."""
    gold = (rng.random(size) < 0.15).astype(int)
    z = 0.6 * (gold - 0.15) + 0.25 * rng.standard_normal(size)
    per_fold = np.clip(0.15 + z[None, :] + 0.02 * rng.standard_normal(k)[:, None], 0.001, 0.999)
    rows = (np.concatenate([rng.choice(np.flatnonzero(gold == c), n // 2, replace=False) for c in (0, 1)]) if balanced
            else rng.choice(size, n, replace=False))
    fold = np.arange(n) % k
    labels = ["no", "yes"]
    corpus = pd.DataFrame({"post": [f"p{i}" for i in range(size)], "text": [f"text {i}" for i in range(size)]})
    corpus.insert(0, "row", range(size))
    mean = per_fold.mean(axis=0)
    corpus["prediction"] = np.where(mean > 0.5, "yes", "no")
    corpus["prob_no"], corpus["prob_yes"] = 1 - mean, mean
    for f in range(k):
        corpus[f"fold{f}_prob_no"], corpus[f"fold{f}_prob_yes"] = 1 - per_fold[f], per_fold[f]
    corpus.to_csv(folder / "corpus.csv", index=False)
    oof = per_fold[fold, rows]
    pd.DataFrame({"id": [f"p{r}" for r in rows], "text": "t", "gold": [labels[g] for g in gold[rows]], "fold": fold,
                  "prediction": np.where(oof > 0.5, "yes", "no"), "prob_no": 1 - oof, "prob_yes": oof}
                 ).to_csv(folder / "oof.csv", index=False)
    provenance = []
    for f in range(k):
        (folder / f"a{f}").mkdir()
        (folder / f"a{f}" / "adapter_model.safetensors").write_bytes(b"x")
        provenance.append({"fold": f, "adapter": str(folder / f"a{f}")})
    (folder / "folds.json").write_text(json.dumps({"labels": labels, "provenance": provenance, "fingerprint": "f" * 64}))
    return folder


@pytest.mark.parametrize("balanced", [False, True])
def test_a_labelled_set_that_is_not_a_random_sample_is_refused(tmp_path, capsys, balanced):
    run = fake_kfold(tmp_path, np.random.default_rng(7), balanced)
    argv = ["--corpus", run / "corpus.csv", "--crossfit", run, "--id_column", "post", "--output_dir", tmp_path / "est"]
    code = run_script("estimate", argv)
    err = capsys.readouterr().err.strip().splitlines()
    if not balanced:
        assert code == 0 and json.loads((tmp_path / "est" / "estimates.json").read_text())["labelled"] == 400
        return
    assert code == 2 and len(err) == 1 and "do not look like a random sample" in err[0] and "p = " in err[0]
    assert not (tmp_path / "est").exists()
    assert run_script("estimate", argv + ["--assume_random_sample"]) == 0
    assert "rejected, assumed anyway" in (tmp_path / "est" / "estimates.md").read_text()


def test_ensemble_flags_that_cannot_apply_are_refused(kfold, tmp_path, capsys):
    for argv, says in ((["--ensemble", kfold, "--adapters_name", "x", "--predict_file", "c.csv"], "without"),
                       (["--ensemble", kfold], "--ensemble RUN labels --predict_file")):
        with pytest.raises(SystemExit) as stop:
            run_script("evaluate", argv)
        assert stop.value.code == 2 and says in capsys.readouterr().err
    (tmp_path / "c.csv").write_text("text\nhello\n")
    assert run_script("evaluate", ["--ensemble", tmp_path, "--predict_file", tmp_path / "c.csv"]) == 2
    assert "no folds.json" in capsys.readouterr().err and not (tmp_path / "c.csv.labeled.csv").exists()
