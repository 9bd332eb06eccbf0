"""Likely label errors (review.py): cleanlab's confident learning on out-of-fold probabilities, a
review sheet ranked by label quality, and the returned sheet folded back into a corrections file
that preprocess.py --corrections applies by id (data/corrections.py; the source data is never edited).

Only out-of-fold probabilities are accepted (oof_of): a model that trained on a row predicts its
given label back, so in-sample probabilities make every label look right. A K-fold run's folds.json
records, per fold, the ids its model trained and validated on; every row's probability must come
from a fold whose model saw neither.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..base.cli import UserError

SHEET_COLUMNS = ("rank", "id", "text", "given", "model_label", "model_probability", "given_probability",
                 "label_quality", "votes", "corrected")
CORRECTIONS_COLUMNS = ("id", "label", "was")


@dataclass
class OutOfFold:
    ids: list
    texts: list
    given: list
    probs: np.ndarray
    labels: list
    source: str


def oof_of(folder, flag: str = "--oof") -> OutOfFold:
    """A K-fold run's out-of-fold probabilities, their provenance checked; anything else refused."""
    from ..base.tables import read_frame
    from .ensemble import FOLDS_FILE, OOF_FILE

    folder = Path(folder)
    if folder.is_file() or not (folder / FOLDS_FILE).is_file():
        raise UserError(f"{flag} {folder}: not a K-fold run (no {FOLDS_FILE}); out-of-fold probabilities are "
                        "needed, since a model's probabilities on rows it trained on make every label look right: "
                        "run train.py --folds K and give its --output_dir")
    record = json.loads((folder / FOLDS_FILE).read_text(encoding="utf-8"))
    if "provenance" not in record or not (folder / OOF_FILE).is_file():
        raise UserError(f"{flag} {folder}: its folds are not all trained and gathered (no {OOF_FILE})")
    oof = read_frame(folder / OOF_FILE, flag)
    seen = {p["fold"]: set(p["trained_on"]) | set(p["validated_on"]) for p in record["provenance"]}
    for row_id, fold in zip(oof["id"].astype(str), oof["fold"]):
        if int(fold) not in seen or row_id in seen[int(fold)]:
            raise UserError(f"{flag} {folder}: row {row_id!r}'s probability comes from fold {fold}, whose model "
                            "trained or validated on it (in-sample probabilities make every label look right)")
    labels = list(record["labels"])
    probs = oof[[f"prob_{l}" for l in labels]].to_numpy(dtype=float)
    return OutOfFold(list(oof["id"].astype(str)), list(oof["text"].astype(str)), list(oof["gold"].astype(str)),
                     probs, labels, str(folder))


def label_issues(given: list, probs: np.ndarray, labels: list) -> dict:
    """cleanlab's flags (find_label_issues, prune_by_noise_rate) and every row's label quality
    (self-confidence: the out-of-fold probability of its given label)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    index = {l: k for k, l in enumerate(labels)}
    y = np.array([index[g] for g in given])
    flags = find_label_issues(y, probs)
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    return {"flagged": np.asarray(flags, dtype=bool), "quality": np.asarray(quality, dtype=float)}


def review_rows(oof: OutOfFold, issues: dict, votes: dict | None = None, include_all: bool = False) -> list:
    """The review sheet: flagged rows (or all with include_all), lowest label quality first."""
    order = np.argsort(issues["quality"], kind="stable")
    rows = []
    for i in order:
        if not (include_all or issues["flagged"][i]):
            continue
        best = int(np.argmax(oof.probs[i]))
        given_k = oof.labels.index(oof.given[i])
        rows.append({"rank": len(rows) + 1, "id": oof.ids[i], "text": oof.texts[i], "given": oof.given[i],
                     "model_label": oof.labels[best], "model_probability": round(float(oof.probs[i, best]), 4),
                     "given_probability": round(float(oof.probs[i, given_k]), 4),
                     "label_quality": round(float(issues["quality"][i]), 4),
                     "votes": _votes_text((votes or {}).get(oof.ids[i])), "corrected": ""})
    return rows


def _votes_text(votes: dict | None) -> str:
    return "; ".join(f"{a}: {l}" for a, l in sorted(votes.items())) if votes else ""


def corrections_from_sheet(sheet: list, labels: list, source: str) -> list:
    """The rows of a returned sheet whose `corrected` cell is filled, checked against the labels."""
    from ..data.corrections import label_named

    if sheet and not {"id", "given", "corrected"} <= set(sheet[0]):
        raise UserError(f"{source}: a review sheet has columns id, given and corrected")
    out, seen = [], set()
    for number, row in enumerate(sheet):
        value = str(row.get("corrected") or "").strip()
        if not value or value.lower() == "nan":
            continue
        row_id = str(row["id"])
        if row_id in seen:
            raise UserError(f"{source}: id {row_id!r} corrected twice (row {number}); each id once")
        seen.add(row_id)
        label = label_named(value, labels, f"{source}: row {number} (id {row_id})")
        if label != row["given"]:
            out.append({"id": row_id, "label": label, "was": row["given"]})
    return out


def ranking_quality(flip_mask: np.ndarray, quality: np.ndarray, flagged: np.ndarray) -> dict:
    """Against planted flips: precision of the k lowest-quality rows (k = flips), and the
    precision and recall of cleanlab's flags."""
    k = int(flip_mask.sum())
    top = np.argsort(quality, kind="stable")[:k]
    hits = int(flip_mask[top].sum())
    tp = int((flagged & flip_mask).sum())
    return {"flipped": k, "precision_at_k": hits / k if k else float("nan"),
            "flagged": int(flagged.sum()), "flag_precision": tp / max(int(flagged.sum()), 1),
            "flag_recall": tp / k if k else float("nan")}
