"""A corrections file (id, label, was; review.py --fold_back writes it) read and applied by id to
the examples, before they are split (preprocess.py --corrections); the source data is never edited
and what changed is recorded in the manifest."""
from __future__ import annotations

from ..base.cli import UserError


def label_named(value, names: list, context: str) -> str:
    from .labels import Label, find_label

    return find_label(value, [Label(n, "") for n in names], context)


def read_corrections(path: str, labels: list) -> dict:
    """A corrections file (id, label, was): id -> corrected label, each label checked."""
    from ..base.tables import read_table

    rows = read_table(path)
    if not rows:  # the reviewer corrected nothing: recorded as such
        return {}
    if not {"id", "label"} <= set(rows[0]):
        raise UserError(f"--corrections {path}: needs columns id and label (review.py --fold_back writes it)")
    out = {}
    for number, row in enumerate(rows):
        row_id = str(row["id"])
        if row_id in out:
            raise UserError(f"--corrections {path}: id {row_id!r} given twice; each id once")
        out[row_id] = label_named(row["label"], labels, f"--corrections {path}: row {number} (id {row_id})")
    return out


def apply_corrections(splits: dict, corrections: dict, source: str) -> list:
    """Relabel the examples named in `corrections` (in place); every id must be found. Returns
    what changed, for the manifest."""
    found, changed = set(), []
    for rows in splits.values():
        for ex in rows:
            if ex["id"] in corrections:
                found.add(ex["id"])
                if ex.get("label") != corrections[ex["id"]]:
                    changed.append({"id": ex["id"], "from": ex.get("label"), "to": corrections[ex["id"]]})
                    ex["label"] = corrections[ex["id"]]
                    ex.pop("fine_label", None)
    missing = sorted(set(corrections) - found)
    if missing:
        raise UserError(f"--corrections {source}: id {missing[0]!r} is not a row of this dataset "
                        f"({len(missing)} such ids)")
    return changed
