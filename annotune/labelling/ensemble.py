"""A K-fold run (train.py --folds K) read back, and a corpus labelled by its K fold models together
(evaluate.py --predict_file --ensemble RUN).

Each fold model labels the corpus in turn (argmax, resumable, as one adapter does: corpus.py) into
<output>.folds/fold_k.csv; the K files are then joined into the output: the input columns, each
fold model's probabilities as fold<k>_prob_<label> (a reserved prefix, as prob_ is), and the
ensemble's as prob_<label> and prediction, so that sample.py and estimate.py read it as any
labelled corpus. The ensemble's probabilities are the K models' mean; its decision rule is fit on
the out-of-fold probabilities of every labelled row (each out of sample), and applied to the
mean where it passes its held-out check (decision.py), else argmax.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.cli import UserError

FOLDS_FILE, OOF_FILE, OOF_METRICS = "folds.json", "oof.csv", "oof_metrics.json"
FOLD_PROB = re.compile(r"^fold(\d+)_prob_(.*)$")


def fold_column(k: int, label: str) -> str:
    return f"fold{k}_prob_{label}"


def is_fold_column(name: str) -> bool:
    return bool(FOLD_PROB.match(str(name)))


@dataclass
class KFoldRun:
    """A gathered K-fold run: its folder, fold adapters (fold order), labels, fingerprint and the
    out-of-fold table (oof.csv: id, text, gold, fold, prediction, prob_<label>)."""
    folder: Path
    adapters: list
    labels: list
    fingerprint: str
    oof: object  # pandas DataFrame

    @property
    def k(self) -> int:
        return len(self.adapters)

    def oof_probs(self) -> np.ndarray:
        return self.oof[[f"prob_{label}" for label in self.labels]].to_numpy(dtype=float)


def read_run(folder, flag: str = "--ensemble") -> KFoldRun:
    """The K-fold run in `folder`, refused in one line unless every fold finished and oof.csv was gathered."""
    from ..base.tables import read_frame

    folder = Path(folder)
    path = folder / FOLDS_FILE
    if not path.is_file():
        raise UserError(f"{flag} {folder}: no {FOLDS_FILE}; give the --output_dir of train.py --folds K")
    record = json.loads(path.read_text(encoding="utf-8"))
    if "provenance" not in record or not (folder / OOF_FILE).is_file():
        raise UserError(f"{flag} {folder}: its folds are not all trained and gathered (no {OOF_FILE}); run the "
                        "same train.py --folds command again to finish it")
    adapters = [Path(p["adapter"]) for p in record["provenance"]]
    for a in adapters:
        if not (a / "adapter_model.safetensors").is_file():
            raise UserError(f"{flag} {folder}: fold adapter {a} is missing")
    oof = read_frame(folder / OOF_FILE, flag)
    return KFoldRun(folder, adapters, list(record["labels"]), record["fingerprint"], oof)


def ensemble_rule(run: KFoldRun, objective: str, precision: str | None):
    """The ensemble's decision rule, fit on the out-of-fold probabilities of every labelled row."""
    from dataclasses import replace

    from .decision import fit_rule

    rule = fit_rule(run.oof_probs(), list(run.oof["gold"]), run.labels, objective, precision=precision)
    return replace(rule, note=rule.note.replace("validation rows", "out-of-fold rows"))


def join(fold_files: list, labels: list, rule, output: Path, input_columns: list) -> dict:
    """The K fold files (row-aligned) into the output: row, input columns, prediction, prob_<label>
    (the ensemble's; calibrated where the rule applies), truncated and fold<k>_prob_<label>."""
    from ..base.tables import read_frame, write_table

    frames = [read_frame(f, "a fold's labelled corpus") for f in fold_files]
    rows = [list(frame["row"]) for frame in frames]
    if any(r != rows[0] for r in rows[1:]):
        raise UserError(f"{Path(fold_files[0]).parent}: the fold files hold different rows; pass --overwrite")
    per_fold = np.stack([frame[[f"prob_{label}" for label in labels]].to_numpy(dtype=float) for frame in frames])
    mean = per_fold.mean(axis=0)
    if rule is not None and rule.fitted:
        probs, given = rule.apply(mean)
    else:
        probs, given = mean, [labels[i] for i in mean.argmax(axis=1)]
    out = frames[0][["row"] + list(input_columns)].copy()  # the layout of one adapter's labelled corpus
    out["prediction"] = given
    for j, label in enumerate(labels):
        out[f"prob_{label}"] = np.round(np.clip(probs[:, j], 0, 1), 6)
    out["truncated"] = np.max([frame["truncated"].astype(int).to_numpy() for frame in frames], axis=0)
    for k in range(len(frames)):
        for j, label in enumerate(labels):
            out[fold_column(k, label)] = np.round(np.clip(per_fold[k, :, j], 0, 1), 6)
    write_table(output, out.to_dict("records"), list(out.columns))
    return {"rows": len(out), "per_fold": per_fold}
