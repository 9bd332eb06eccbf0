"""K-fold training (train.py --folds K): every labelled row (the source's train and validation
splits; its test split is left alone) is held out by exactly one of K ordinary runs, so that each
gets a probability from a model that never trained or validated on it (out-of-fold).

The run folder RUN holds folds.json (the plan: K, seed, the inner validation share, each fold's
held-out, training and validation ids; after gathering, the fingerprint and each fold's adapter),
and per fold RUN/fold_k/: data/ (a dataset folder: train = the other folds less an inner
validation share, validation = that share, test = the held-out fold), run/ (an ordinary train.py
run on data/: its adapter is usable by every script) and heldout.jsonl (the adapter's
probabilities on the held-out rows, before any decision rule). Once all K are scored, oof.csv
(id, text, gold, fold, prediction = the argmax, prob_<label>) and oof_metrics.json are gathered.
A killed run resumes: finished folds are kept, the running one resumes from its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..base.cli import UserError
from ..labelling.ensemble import FOLDS_FILE, OOF_FILE, OOF_METRICS

HELDOUT = "heldout.jsonl"
FORMAT = "annotune-folds/1"


def labelled_rows(labelling) -> list:
    """The rows folded: the source's train and validation splits (its test split is left alone)."""
    return list(labelling.splits.get("train", [])) + list(labelling.splits.get("validation", []))


def plan_folds(labelling, k: int, seed: int, validation_share: float) -> dict:
    """Stratified folds of the labelled rows and, inside each fold's training rows, a stratified
    inner validation share (its epoch choice and decision rule): ids only."""
    from ..data.examples import assign_folds, stratified_split

    rows = labelled_rows(labelling)
    if len(rows) < 2 * k:
        raise UserError(f"--folds {k}: {len(rows)} labelled rows; each fold needs at least 2")
    fold_of = assign_folds(rows, k, seed)
    folds = []
    for f in range(k):
        held = [r for r in rows if fold_of[r["id"]] == f]
        train, validation = stratified_split([r for r in rows if fold_of[r["id"]] != f], validation_share, seed + f)
        folds.append({"fold": f, "heldout_ids": [r["id"] for r in held], "train_ids": [r["id"] for r in train],
                      "validation_ids": [r["id"] for r in validation]})
    return {"format": FORMAT, "folds_k": k, "seed": seed, "validation_share": validation_share,
            "labelled": len(rows), "labels": labelling.reported.label_names,
            "test_ids_left_alone": [r["id"] for r in labelling.splits.get("test", [])], "folds": folds}


def settle_plan(run: Path, plan: dict) -> dict:
    """The plan in RUN/folds.json: written when new, else the one there, which must be this one
    (a resume with another K, seed, share or other rows is refused)."""
    from ..base.files import atomic_write_json

    path = Path(run) / FOLDS_FILE
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("folds_k", "seed", "validation_share", "labels", "folds"):
            if old.get(key) != plan[key]:
                what = "the rows or their folds" if key == "folds" else key
                raise UserError(f"{run} holds a K-fold run with other {what} ({FOLDS_FILE}); give the same flags "
                                "to resume it, or another --output_dir")
        return old
    Path(run).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)
    return plan


def fold_splits(labelling, plan: dict, f: int) -> dict:
    """Fold f's dataset: train, validation (inner) and test (held out)."""
    by_id = {r["id"]: r for r in labelled_rows(labelling)}
    fold = plan["folds"][f]
    return {"train": [by_id[i] for i in fold["train_ids"]], "validation": [by_id[i] for i in fold["validation_ids"]],
            "test": [by_id[i] for i in fold["heldout_ids"]]}


def write_fold_data(folder: Path, splits: dict, manifest: dict) -> Path:
    """Fold f's dataset folder (preprocess.py's format), written once."""
    from ..data.examples import split_summary, write_dataset_folder

    if not (folder / "manifest.json").exists():
        write_dataset_folder(folder, splits, dict(manifest, splits=split_summary(splits)), num_preview=1)
    return folder


def fold_dir(run: Path, f: int) -> Path:
    return Path(run) / f"fold_{f}"


def fold_state(run: Path, f: int) -> str:
    """'scored' (trained and its held-out rows scored), 'trained', 'started' or 'new'."""
    folder = fold_dir(run, f)
    if (folder / HELDOUT).exists():
        return "scored"
    manifest = folder / "run" / "manifest.json"
    if not manifest.exists():
        return "new"
    return "trained" if json.loads(manifest.read_text(encoding="utf-8")).get("result") else "started"


def kept_adapter(run_dir: Path) -> Path:
    """The adapter a finished fold run kept: its best validation epoch's, else its last."""
    result = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))["result"]
    adapters = [Path(a) for a in result["adapters"]]
    best = (result.get("best") or {}).get("epoch")
    for a in adapters:
        if best is not None and a.name.endswith(f"-epoch{best}"):
            return a
    return adapters[-1]


def score_heldout(run: Path, f: int, rows: list, batch_size: int, cpu_bf16: str) -> None:
    """The fold's adapter's probabilities (before any decision rule) on its held-out rows."""
    from ..base.files import atomic_write_jsonl
    from ..labelling.annotator import evaluate_rows, load_annotator
    from ..labelling.contract import from_adapter

    adapter = kept_adapter(fold_dir(run, f) / "run")
    labelling = from_adapter(adapter)
    annotator = load_annotator(labelling, cpu_bf16=cpu_bf16)
    _, records = evaluate_rows(labelling, annotator, rows, "score", batch_size, n_boot=0)
    out = [{"id": r["id"], "text": r["text"], "gold": r["gold"], "fold": f,
            "probs": {k: round(float(v), 8) for k, v in r["probs"].items()}} for r in records]
    atomic_write_jsonl(fold_dir(run, f) / HELDOUT, out)


def provenance(run: Path, plan: dict) -> list:
    """Per fold: the adapter, its weights' SHA-256 and the ids it trained and validated on (read
    from its run's manifest); refused if any held-out id is among them."""
    from ..base.files import file_sha256

    out = []
    for fold in plan["folds"]:
        run_dir = fold_dir(run, fold["fold"]) / "run"
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        split_ids = manifest["data"]["splits"]
        seen = set(split_ids["train"]["ids"]) | set(manifest.get("eval_examples", []))
        leaked = seen & set(fold["heldout_ids"])
        if leaked:
            raise UserError(f"fold {fold['fold']}: its model trained or validated on held-out row {sorted(leaked)[0]}")
        adapter = kept_adapter(run_dir)
        out.append({"fold": fold["fold"], "adapter": str(adapter),
                    "adapter_sha256": file_sha256(adapter / "adapter_model.safetensors"),
                    "trained_on": sorted(split_ids["train"]["ids"]),
                    "validated_on": sorted(manifest.get("eval_examples", []))})
    return out


def gather(run: Path, plan: dict, n_boot: int = 1000) -> dict:
    """oof.csv, oof_metrics.json and folds.json's provenance, from the K held-out files."""
    from ..base.files import atomic_write_json, read_jsonl
    from ..base.tables import write_table
    from ..labelling.metrics import classification_metrics

    labels = plan["labels"]
    rows = [r for f in range(plan["folds_k"]) for r in read_jsonl(fold_dir(run, f) / HELDOUT)]
    if sorted(r["id"] for r in rows) != sorted(i for fold in plan["folds"] for i in fold["heldout_ids"]):
        raise UserError(f"{run}: the held-out files do not cover the plan's rows once each; rerun the fold")
    table = []
    for r in rows:
        probs = [r["probs"][label] for label in labels]
        table.append({"id": r["id"], "text": r["text"], "gold": r["gold"], "fold": r["fold"],
                      "prediction": labels[max(range(len(labels)), key=probs.__getitem__)],
                      **{f"prob_{label}": p for label, p in zip(labels, probs)}})
    write_table(Path(run) / OOF_FILE, table, list(table[0]))
    metrics = classification_metrics([r["gold"] for r in table], [r["prediction"] for r in table], labels,
                                     [[r[f"prob_{label}"] for label in labels] for r in table], n_boot)
    metrics["what"] = (f"out-of-fold: each of the {len(table)} labelled rows predicted (argmax) by the one of "
                       f"{plan['folds_k']} models that did not see it; the quality of the training procedure on "
                       f"{plan['folds_k'] - 1}/{plan['folds_k']} of the rows, not of the {plan['folds_k']} models' "
                       "ensemble")
    atomic_write_json(Path(run) / OOF_METRICS, metrics)
    record = dict(plan, provenance=provenance(run, plan))
    record["fingerprint"] = hashlib.sha256(json.dumps([plan, [p["adapter_sha256"] for p in record["provenance"]]],
                                                      sort_keys=True).encode()).hexdigest()
    atomic_write_json(Path(run) / FOLDS_FILE, record)
    return metrics


def run_folds(run: Path, plan: dict, labelling, data_manifest: dict, todo, train_fold, batch_size: int,
              cpu_bf16: str) -> int:
    """Train (or resume) and score the folds in `todo`; gather when all K are scored. train_fold(data
    folder, run folder, resume) runs one ordinary training and returns its exit status."""
    k = plan["folds_k"]
    for f in todo:
        state, splits = fold_state(run, f), fold_splits(labelling, plan, f)
        if state in ("new", "started"):
            data = write_fold_data(fold_dir(run, f) / "data", splits, data_manifest)
            print(f"fold {f} of {k}: {len(splits['train'])} training, {len(splits['validation'])} validation, "
                  f"{len(splits['test'])} held-out rows{' (resuming)' * (state == 'started')}")
            code = train_fold(data, fold_dir(run, f) / "run", state == "started")
            if code or fold_state(run, f) != "trained":
                print(f"fold {f} stopped before it finished: give the same command again to resume it")
                return code
        if fold_state(run, f) != "scored":
            score_heldout(run, f, splits["test"], batch_size, cpu_bf16)
    waiting = [f for f in range(k) if fold_state(run, f) != "scored"]
    if waiting:
        print(f"folds {', '.join(map(str, waiting))} not done yet: oof.csv is gathered by the run that finishes last")
        return 0
    print(describe(plan, gather(run, plan)))
    print(f"wrote {Path(run) / OOF_FILE}, {Path(run) / OOF_METRICS}, {Path(run) / FOLDS_FILE}; fold adapters in "
          f"{run}/fold_*/run/")
    return 0


def describe(plan: dict, metrics: dict) -> str:
    """The out-of-fold metrics with their CIs, said for what they are."""
    from ..labelling.metrics import LABEL_METRICS

    k, ci = plan["folds_k"], metrics.get("ci95", {})
    shown = ", ".join(f"{m.title} {metrics[m.key]:.3f}" + (f" [{ci[m.key][0]:.3f}, {ci[m.key][1]:.3f}]"
                                                           if m.key in ci else "") for m in LABEL_METRICS)
    return (f"out-of-fold over {plan['labelled']} labelled rows (each predicted by the one of {k} models that did not "
            f"see it: the training procedure's quality on {k - 1}/{k} of the rows, not the ensemble's): {shown}")
