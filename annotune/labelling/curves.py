"""Learning curves (learning_curve.py): an annotator's quality against the number of labelled rows
it was given, per arm (TF-IDF, a classification head, the tuned LLM), with 95% bands, and where
more labels stop paying.

A curve's cells are (arm, seed, size). Each seed orders the labelled rows once (`nested_order`):
every prefix is stratified by label, so each size is a superset of the smaller ones; a cell uses
the first `size` rows, a stratified share of them as its validation rows (a size counts every row
used). Every cell is scored on the same test rows, so two cells' differences are paired.

Bands and differences resample the test rows and the seeds together (`bootstrap`): the band of a
size is the percentile interval of the seeds' mean metric; "where more labels stop paying" is a
non-inferiority call against the largest size: the smallest size whose paired difference to it
has its lower 95% end above -margin, or "not resolvable" when the difference's interval is wider
than the margin at every size (too few test rows to tell).
"""
from __future__ import annotations

import numpy as np

from .metrics import label_metric


def nested_order(rows: list, seed: int) -> list:
    """Row ids in an order whose every prefix is stratified by label: each label's rows shuffled,
    the i-th of a label's m rows keyed (i + u) / m with u uniform in [0, 1), sorted by key."""
    rng = np.random.default_rng(seed)
    by_label = {}
    for row in rows:
        by_label.setdefault(str(row["label"]), []).append(row["id"])
    keyed = []
    for label in sorted(by_label):
        ids = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
        keyed += [((i + rng.random()) / len(ids), row_id) for i, row_id in enumerate(ids)]
    return [row_id for _, row_id in sorted(keyed)]


def check_sizes(sizes: list, available: int) -> None:
    from ..base.cli import UserError

    if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 4:
        raise UserError(f"--sizes {','.join(map(str, sizes))}: sizes must increase, each at least 4")
    if sizes[-1] > available:
        raise UserError(f"--sizes: {sizes[-1]} rows asked, the task has {available} labelled rows (train + validation)")


def resample(series: dict, gold: list, labels: list, metric: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """series: {(arm, size): [test-row predictions, one list per seed]}. Returns {key: (the seeds'
    mean metric, its n_boot bootstrap draws)}: each draw resamples the test rows (the same rows for
    every key: differences are paired) and each arm's seeds (the same seeds for all its sizes)."""
    fn = label_metric(metric).fn
    gold = np.asarray(gold, dtype=object)
    runs = {key: [np.asarray(p, dtype=object) for p in preds] for key, preds in series.items()}
    seeds = {}
    for (arm, _), preds in runs.items():
        seeds[arm] = min(seeds.get(arm, len(preds)), len(preds))
    rng = np.random.default_rng(seed)
    draws = {key: np.empty(n_boot) for key in runs}
    for b in range(n_boot):
        idx = rng.integers(0, len(gold), len(gold))
        picks = {arm: rng.integers(0, n, n) for arm, n in seeds.items()}
        for (arm, size), preds in runs.items():
            draws[arm, size][b] = np.mean([fn(gold[idx], preds[k][idx], labels) for k in picks[arm]])
    return {key: (float(np.mean([fn(gold, p, labels) for p in preds])), draws[key]) for key, preds in runs.items()}


def summarise(resampled: dict, reference: str = "tfidf", flat: str | None = None) -> dict:
    """Per arm and size: value, 95% band, the paired difference to the arm's largest size and to
    the reference arm at the same size, each with its 95% interval; flat: an arm of one size (a
    reference line, e.g. the few-shot row), which every other cell is also compared with (vs_flat)."""
    ci = lambda d: [float(x) for x in np.percentile(d, [2.5, 97.5])]  # noqa: E731
    line = next(((v, d) for (a, _), (v, d) in resampled.items() if a == flat), None)
    out = {}
    for (arm, size), (value, draws) in sorted(resampled.items(), key=lambda kv: (kv[0][0] == flat, kv[0])):
        cell = {"value": value, "band": ci(draws)}
        if arm != flat:
            top_value, top = resampled[arm, max(s for a, s in resampled if a == arm)]
            cell.update(vs_largest=value - top_value, vs_largest_ci=ci(draws - top))
            if arm != reference and (reference, size) in resampled:
                ref_value, ref = resampled[reference, size]
                cell.update(vs_reference=value - ref_value, vs_reference_ci=ci(draws - ref))
            if line is not None:
                cell.update(vs_flat=value - line[0], vs_flat_ci=ci(draws - line[1]))
        out.setdefault(arm, {})[size] = cell
    return out


def enough_at(curve: dict, margin: float) -> dict:
    """Where more labels stop paying: the smallest size whose paired difference to the largest has
    its lower 95% end at or above -margin; when none has, 'not resolvable' if every difference's
    interval is wider than the margin (too few test rows to tell), else the largest size (the curve
    has not flattened by then); no call for a single size."""
    sizes = sorted(curve)
    largest, smaller = sizes[-1], sizes[:-1]
    if not smaller:  # one size: nothing to compare it with
        return {"size": None, "margin": margin, "call": f"one size ({largest} rows): no smaller size to compare"}
    for s in smaller:
        if curve[s]["vs_largest_ci"][0] >= -margin:
            return {"size": s, "margin": margin,
                    "call": f"{s} rows: not worse than {largest} by more than {margin} (lower 95% end)"}
    if smaller and all(curve[s]["vs_largest_ci"][1] - curve[s]["vs_largest_ci"][0] > margin for s in smaller):
        return {"size": None, "margin": margin,
                "call": f"not resolvable with these test rows: every difference's 95% interval is wider than {margin}"}
    return {"size": largest, "margin": margin,
            "call": f"{largest} rows: every smaller size is worse by more than {margin} (not flattened yet)"}


def markdown(curve: dict, enough: dict, metric: str, reference: str = "tfidf", seconds: dict | None = None,
             notes: dict | None = None, flat: str | None = None) -> str:
    """curve.md: per arm and size the metric with its band, the difference to the reference arm at
    that size, to the flat arm (if any) and to the arm's largest size; then where each arm stops
    paying, and notes per arm (e.g. its seeds)."""
    title = label_metric(metric).title
    with_flat = flat in curve
    head = f"| arm | labelled rows | {title} [95% band] | vs {reference} [95% CI] |" + \
        (f" vs {flat} [95% CI] |" if with_flat else "") + " vs the largest size [95% CI] | seconds a cell |"
    lines = [head, "|---" * head.count("|", 1) + "|"]

    def fmt(cell, key):
        return f"{cell[key]:+.3f} [{cell[key + '_ci'][0]:+.3f}, {cell[key + '_ci'][1]:+.3f}]" if key in cell else ""

    for arm, sizes in curve.items():
        for size, cell in sizes.items():
            took = (seconds or {}).get(arm, {}).get(size)
            lines.append(f"| {arm} | {size} | {cell['value']:.3f} [{cell['band'][0]:.3f}, {cell['band'][1]:.3f}] | "
                         f"{fmt(cell, 'vs_reference')} |" + (f" {fmt(cell, 'vs_flat')} |" if with_flat else "") +
                         f" {fmt(cell, 'vs_largest')} | {'' if took is None else f'{took:.0f}'} |")
    lines += [""] + [f"- {arm}: {call['call']}" for arm, call in enough.items()]
    lines += [f"- {arm}: {note}" for arm, note in (notes or {}).items()]
    return "\n".join(lines) + "\n"


def plot(curve: dict, path, metric: str, flat: str | None = None, flat_label: str | None = None) -> None:
    """curve.png: the metric against labelled rows (log scale), one line and band per arm; the flat
    arm a dashed horizontal line with its band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    span = sorted({s for arm, sizes in curve.items() if arm != flat for s in sizes})
    for arm, sizes in curve.items():
        if arm == flat and span:
            cell = next(iter(sizes.values()))
            ax.plot([span[0], span[-1]], [cell["value"]] * 2, linestyle="--", color="grey", label=flat_label or arm)
            ax.fill_between([span[0], span[-1]], [cell["band"][0]] * 2, [cell["band"][1]] * 2, color="grey", alpha=0.15)
            continue
        xs = sorted(sizes)
        ax.plot(xs, [sizes[s]["value"] for s in xs], marker="o", label=arm)
        ax.fill_between(xs, [sizes[s]["band"][0] for s in xs], [sizes[s]["band"][1] for s in xs], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(span, [str(s) for s in span])
    ax.minorticks_off()
    ax.set_xlabel("labelled rows (training + validation)")
    ax.set_ylabel(f"{label_metric(metric).title} on the test rows")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
