"""Agreement with human annotators: Cohen's kappa of the model against each human beside the
humans against each other, on the same rows (the number that tells whether a model can stand in
for an annotator). Rows the model was trained on are left out, so the comparison is not flattered.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

from ..base.cli import UserError
from ..base.tables import read_table
from .metrics import cohen_kappa


def load_annotations(paths, spec, id_column: str = "id", label_column: str = "User label") -> tuple:
    """({annotator: {id: label}}, {id: text}) with labels mapped into the task's (merged) label set."""
    from ..data.examples import text_of

    humans, texts = {}, {}
    for path in paths:
        rows = read_table(str(path))
        name = Path(path).stem
        labels = {}
        for number, row in enumerate(rows):
            if id_column not in row or label_column not in row:
                raise UserError(f"{path}: row {number} lacks column {id_column!r} or {label_column!r}")
            labels[str(row[id_column])] = spec.task_label(row[label_column], f" (row {number} of {path})")
            texts.setdefault(str(row[id_column]), text_of(spec, row))
        humans[name] = labels
    return humans, texts


def agreement_rows(humans: dict, exclude_ids) -> list:
    """Ids every annotator labelled, minus the excluded (training) ids, in a stable order."""
    common = set.intersection(*(set(labels) for labels in humans.values()))
    return sorted(common - set(exclude_ids))


def agreement_table(model_name: str, predictions: dict, humans: dict, ids, labels) -> dict:
    """kappa for every pair among the model and the humans on `ids`; percent agreement too."""
    raters = {model_name: predictions, **humans}
    pairs = []
    for a, b in combinations(raters, 2):
        x = [raters[a][i] for i in ids]
        y = [raters[b][i] for i in ids]
        pairs.append({"a": a, "b": b, "kappa": cohen_kappa(x, y, labels),
                      "agreement": sum(p == q for p, q in zip(x, y)) / len(ids) if ids else float("nan")})
    return {"n": len(ids), "ids": list(ids), "pairs": pairs}


def agreement_markdown(table: dict) -> str:
    lines = [f"Agreement on {table['n']} rows annotated by every human and not used for training:", "",
             "| rater A | rater B | Cohen's kappa | % agreement |", "|---|---|---|---|"]
    for p in table["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['kappa']:.3f} | {100 * p['agreement']:.1f} |")
    return "\n".join(lines) + "\n"


def human_agreement(labelling, annotator, files, id_column, label_column, train_ids, mode, batch_size) -> dict:
    """The model's labels (through its labelling: contract.Labelling.label) on the rows every human
    annotated (training rows left out) and kappa for every pair of raters."""
    humans, texts = load_annotations(files, labelling.reported, id_column, label_column)
    ids = agreement_rows(humans, train_ids)
    if not ids:
        raise UserError("no row is annotated by every --annotations file outside the training split")
    preds = labelling.label(annotator, [{"id": i, "text": texts[i]} for i in ids], mode, batch_size)
    predictions = {i: p["prediction"] for i, p in zip(ids, preds)}
    return agreement_table(annotator.name, predictions, humans, ids, labelling.reported.label_names)
