"""The annotators' report (annotators.py): what the votes say about each annotator, how much they
agree, and where a model trained on their labels sits among them.

- Consensus per item under every aggregator of data/annotations.py (majority, Dawid-Skene, MACE),
  with its posterior per label.
- Per annotator: items labelled; agreement with the leave-one-out consensus (the majority of the
  OTHER annotators on the same item, a tie giving 1/t credit when the annotator's label is among
  the t tied ones), with a bootstrap CI over that annotator's items; Dawid-Skene's accuracy and
  MACE's competence, with CIs from refitting on item resamples.
- Krippendorff's alpha (the `krippendorff` package): nominal, ordinal where the labels are ordered,
  and per label (that label against the rest), each with a bootstrap CI over items. Not Fleiss'
  kappa: the number of annotators varies per item.
- With a model (out-of-fold labels only, see label_errors.oof_of): the model is scored against the
  same leave-one-out consensus of the humans on each annotator's items, paired (model minus
  annotator, bootstrap over items), and placed among the annotators with at least `min_items`
  items; CROWDLAB's consensus and annotator quality (cleanlab.multiannotator) weigh it in.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .metrics import mean_ci

MODEL = "model (out-of-fold)"


@dataclass
class Votes:
    """The votes of a task: (item, annotator, label) triples and the label order."""
    triples: list
    labels: list

    def by_item(self) -> dict:
        out = defaultdict(dict)
        for item, annotator, label in self.triples:
            out[item][annotator] = label
        return out

    def frame(self):
        from ..data.annotations import votes_frame

        return votes_frame(self.triples)


def loo_credit(label: str, others: list) -> float:
    """Agreement of one label with the majority of the other annotators' labels (1/t on a t-way tie)."""
    counts = Counter(others)
    top = max(counts.values())
    tied = [l for l, c in counts.items() if c == top]
    return 1.0 / len(tied) if label in tied else 0.0


def loo_scores(items: dict, annotator: str) -> dict:
    """item -> the annotator's leave-one-out credit, on its items that another annotator labelled too."""
    out = {}
    for item, votes in items.items():
        if annotator in votes:
            others = [l for a, l in votes.items() if a != annotator and a != MODEL]
            if others:
                out[item] = loo_credit(votes[annotator], others)
    return out


def annotator_table(votes: Votes, consensus: dict, n_boot: int, seed: int, model: dict | None = None) -> list:
    """One row per annotator (and the model, if given): items, agreement with the consensus of each
    method, leave-one-out agreement with CI, and the paired difference model - annotator."""
    items = votes.by_item()
    if model:
        for item, label in model.items():
            if item in items:
                items[item][MODEL] = label
    annotators = sorted({a for v in items.values() for a in v}, key=lambda a: (a == MODEL, a))
    model_loo = loo_scores(items, MODEL) if model else {}
    rows = []
    for a in annotators:
        mine = [i for i, v in items.items() if a in v]
        loo = loo_scores(items, a) if a != MODEL else model_loo
        row = {"annotator": a, "items": len(mine), "items_with_others": len(loo),
               "loo_agreement": float(np.mean(list(loo.values()))) if loo else None,
               "loo_ci": mean_ci(list(loo.values()), n_boot, seed)}
        for method, cons in consensus.items():
            hits = [float(items[i][a] == cons.labels.get(i)) for i in mine]
            row[f"agrees_{method}"] = float(np.mean(hits)) if hits else None
            row[f"agrees_{method}_ci"] = mean_ci(hits, n_boot, seed)
            row[f"quality_{method}"] = cons.quality.get(a)
        if model and a != MODEL:  # the model against the same others as the annotator: a left out too
            shared = [i for i in loo if MODEL in items[i]]
            diff = [loo_credit(items[i][MODEL], [l for h, l in items[i].items() if h not in (a, MODEL)]) - loo[i]
                    for i in shared]
            row["paired_items"] = len(shared)
            row["model_minus_annotator"] = float(np.mean(diff)) if diff else None
            row["model_minus_annotator_ci"] = mean_ci(diff, n_boot, seed)
        rows.append(row)
    return rows


def refit_quality_ci(votes: Votes, method: str, tie: str, n_refit: int, seed: int) -> dict:
    """annotator -> [low, high] of a method's quality over refits on bootstrap resamples of the items."""
    from ..data.annotations import aggregate

    frame = votes.frame()
    item_ids = frame["task"].unique()
    import os

    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    draws = defaultdict(list)
    for b in tqdm(range(n_refit), desc=f"{method} refits", leave=False, disable=not os.isatty(2)):
        picked = rng.choice(item_ids, len(item_ids))
        cons = aggregate(_resample(frame, picked), votes.labels, method, tie, seed + b)
        for a, q in cons.quality.items():
            draws[a].append(q)
    return {a: [float(np.quantile(q, 0.025)), float(np.quantile(q, 0.975))] for a, q in draws.items()}


def _resample(frame, picked):
    """The votes of the picked items, an item drawn twice appearing as two items."""
    positions = frame.groupby("task", sort=False).indices
    rows = np.concatenate([positions[i] for i in picked])
    names = np.concatenate([[f"{i}#{k}"] * len(positions[i]) for k, i in enumerate(picked)])
    return frame.iloc[rows].assign(task=names).reset_index(drop=True)


def alphas(votes: Votes, ordinal: bool, n_boot: int, seed: int) -> dict:
    """Krippendorff's alpha: nominal (and ordinal), and per label (that label vs the rest), with CIs."""
    import krippendorff

    items = votes.by_item()
    annotators = sorted({a for v in items.values() for a in v})
    col = {a: j for j, a in enumerate(annotators)}
    index = {l: k for k, l in enumerate(votes.labels)}
    matrix = np.full((len(annotators), len(items)), np.nan)
    for j, votes_of in enumerate(items.values()):
        for a, label in votes_of.items():
            matrix[col[a], j] = index[label]
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, matrix.shape[1], matrix.shape[1]) for _ in range(n_boot)]

    def with_ci(data, level):
        value = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
        draws = [krippendorff.alpha(reliability_data=data[:, b], level_of_measurement=level) for b in boots]
        return {"alpha": value, "ci": [float(np.nanquantile(draws, 0.025)), float(np.nanquantile(draws, 0.975))]}

    out = {"nominal": with_ci(matrix, "nominal")}
    if ordinal:
        out["ordinal"] = with_ci(matrix, "ordinal")
    out["per_label"] = {}
    for label, k in index.items():
        binary = np.where(np.isnan(matrix), np.nan, (matrix == k).astype(float))
        if np.nansum(binary) > 0:
            out["per_label"][label] = with_ci(binary, "nominal")
    return out


def crowdlab(votes: Votes, items: list, probs: np.ndarray) -> dict:
    """CROWDLAB (cleanlab.multiannotator) on the items the model labelled out of fold."""
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    by_item = votes.by_item()
    annotators = sorted({a for i in items for a in by_item[i]})
    index = {l: k for k, l in enumerate(votes.labels)}
    table = pd.DataFrame([[index[by_item[i][a]] if a in by_item[i] else np.nan for a in annotators] for i in items],
                         columns=annotators)
    result = get_label_quality_multiannotator(table, probs, verbose=False)
    quality = result["label_quality"]
    stats = result["annotator_stats"]
    return {"consensus": {i: votes.labels[int(c)] for i, c in zip(items, quality["consensus_label"])},
            "consensus_quality": {i: float(q) for i, q in zip(items, quality["consensus_quality_score"])},
            "annotator_quality": {str(a): float(q) for a, q in stats["annotator_quality"].items()},
            "model_weight": float(result.get("model_weight", np.nan)) if "model_weight" in result else None}


def headline(rows: list, min_items: int) -> str:
    """Where the model's leave-one-out agreement sits among the annotators with >= min_items items."""
    model = next((r for r in rows if r["annotator"] == MODEL), None)
    if model is None or model["loo_agreement"] is None:
        return "no model given: annotators only"
    peers = [r for r in rows if r["annotator"] != MODEL and r["items_with_others"] >= min_items
             and r["model_minus_annotator"] is not None]
    if not peers:
        return f"no annotator labelled {min_items} items that others labelled too: the model cannot be ranked"
    better = sum(1 for r in peers if r["model_minus_annotator_ci"][0] > 0)
    worse = sum(1 for r in peers if r["model_minus_annotator_ci"][1] < 0)
    below = sum(1 for r in peers if r["loo_agreement"] < model["loo_agreement"])
    lo, hi = model["loo_ci"]
    return (f"The model agrees with the other annotators' majority on {model['loo_agreement']:.3f} of items "
            f"(95% CI {lo:.3f}-{hi:.3f}); of the {len(peers)} annotators with at least {min_items} such items, "
            f"{below} agree less. Paired on each one's items: the model is better beyond the CI than {better}, "
            f"worse beyond it than {worse}, not distinguishable from {len(peers) - better - worse}.")


def report(votes: Votes, methods: list, tie: str, ordinal: bool, min_items: int, n_boot: int, n_refit: int,
           seed: int, oof=None) -> dict:
    """Everything annotators.py writes, from the votes and (optionally) a K-fold run's out-of-fold
    probabilities (label_errors.OutOfFold)."""
    from ..data.annotations import aggregate

    frame, per_item = votes.frame(), votes.by_item()
    consensus = {m: aggregate(frame, votes.labels, m, tie, seed) for m in methods}
    model = None
    if oof is not None:
        model = {i: oof.labels[int(np.argmax(p))] for i, p in zip(oof.ids, oof.probs)}
        if not set(model) & set(per_item):
            from ..base.cli import UserError

            raise UserError(f"--oof {oof.source}: none of its ids is an annotated item (ids like "
                            f"{oof.ids[0]!r}); train it with train.py --folds K on this task")
    rows = annotator_table(votes, consensus, n_boot, seed, model)
    for m in methods:
        if m != "majority" and n_refit:
            cis = refit_quality_ci(votes, m, tie, n_refit, seed)
            for r in rows:
                r[f"quality_{m}_ci"] = cis.get(r["annotator"])
    out = {"labels": votes.labels, "votes": len(votes.triples), "items": len(per_item),
           "items_with_one_vote": sum(1 for v in per_item.values() if len(v) == 1),
           "annotators": len({a for _, a, _ in votes.triples}), "min_items": min_items, "tie": tie,
           "methods": {m: {"quality": c.quality_name,
                           "label_counts": dict(Counter(l for l in c.labels.values() if l is not None))}
                       for m, c in consensus.items()},
           "alpha": alphas(votes, ordinal, n_boot, seed), "table": rows, "headline": headline(rows, min_items),
           "items_table": _items_table(votes, consensus)}
    if oof is not None:
        shared = [i for i in oof.ids if i in per_item]
        pos = {i: k for k, i in enumerate(oof.ids)}
        out["crowdlab"] = crowdlab(votes, shared, oof.probs[[pos[i] for i in shared]])
        out["model_items"] = len(shared)
        out["methods_agree_on"] = _method_agreement(consensus)
    return out


def _method_agreement(consensus: dict) -> dict:
    names = list(consensus)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [k for k, v in consensus[a].labels.items() if v is not None and consensus[b].labels.get(k)]
            out[f"{a} vs {b}"] = float(np.mean([consensus[a].labels[k] == consensus[b].labels[k] for k in shared]))
    return out


def _items_table(votes: Votes, consensus: dict) -> list:
    out = []
    for item, by in votes.by_item().items():
        row = {"id": item, "votes": "; ".join(f"{a}: {l}" for a, l in sorted(by.items()))}
        for m, c in consensus.items():
            row[m] = c.labels.get(item) or ""
            for label in votes.labels:
                row[f"{m}_p_{label}"] = round(float(c.probas.loc[item, label]), 4) if item in c.probas.index else ""
        out.append(row)
    return out


def markdown(rep: dict, title: str) -> str:
    a = rep["alpha"]
    lines = [f"# Annotators: {title}", "", rep["headline"], "",
             f"{rep['votes']} votes by {rep['annotators']} annotators on {rep['items']} items "
             f"({rep['items_with_one_vote']} with one vote: no agreement measurable there).", "",
             "| Krippendorff's alpha | value | 95% CI |", "|---|---|---|"]
    for name in ("nominal", "ordinal"):
        if name in a:
            lines.append(f"| {name} | {a[name]['alpha']:.3f} | {a[name]['ci'][0]:.3f}-{a[name]['ci'][1]:.3f} |")
    for label, v in a["per_label"].items():
        lines.append(f"| {label} vs the rest | {v['alpha']:.3f} | {v['ci'][0]:.3f}-{v['ci'][1]:.3f} |")
    methods = list(rep["methods"])
    if rep["annotators"] < 3:
        lines += ["", "Two annotators identify no latent-class model: the Dawid-Skene and MACE qualities below "
                      "mean little and nobody is ranked by them; read the agreement and alpha."]
    lines += ["", "Consensus label counts: " + "; ".join(
        f"{m}: {', '.join(f'{k} {v}' for k, v in rep['methods'][m]['label_counts'].items())}" for m in methods), ""]
    lines += [f"Annotators with at least {rep['min_items']} items that others labelled too (leave-one-out agreement: "
              "with the majority of the others on the same items; quality: each method's own estimate).", "",
              "| annotator | items | LOO agreement (95% CI) | " + " | ".join(f"{m} quality" for m in methods)
              + (" | model - annotator (95% CI) |" if "crowdlab" in rep else " |"),
              "|---|---|---|" + "---|" * len(methods) + ("---|" if "crowdlab" in rep else "")]
    shown = [r for r in rep["table"] if r["items_with_others"] >= rep["min_items"] or r["annotator"] == MODEL]
    for r in sorted(shown, key=lambda r: -(r["loo_agreement"] or 0)):
        cells = [r["annotator"], str(r["items"]), _fmt(r["loo_agreement"], r["loo_ci"])]
        cells += [_fmt(r.get(f"quality_{m}"), r.get(f"quality_{m}_ci")) for m in methods]
        if "crowdlab" in rep:
            cells.append(_fmt(r.get("model_minus_annotator"), r.get("model_minus_annotator_ci"), signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    if "crowdlab" in rep:
        q = rep["crowdlab"]["annotator_quality"]
        lines += ["", f"CROWDLAB (cleanlab, on the {rep['model_items']} items the model labelled out of fold): model "
                      f"weight {rep['crowdlab']['model_weight']}; annotator quality median "
                      f"{np.median(list(q.values())):.3f}."]
        lines += ["", "Methods agree on: " + "; ".join(f"{k} {v:.3f}" for k, v in rep["methods_agree_on"].items())]
    return "\n".join(lines) + "\n"


def _fmt(value, ci=None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{text} ({ci[0]:.3f}-{ci[1]:.3f})" if ci and not any(np.isnan(ci)) else text


def plot(rep: dict, path) -> None:
    """Each annotator's leave-one-out agreement with its CI (those with min_items), the model in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted([r for r in rep["table"] if r["loo_agreement"] is not None and (
        r["items_with_others"] >= rep["min_items"] or r["annotator"] == MODEL)], key=lambda r: r["loo_agreement"])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(rows) + 1)))
    for y, r in enumerate(rows):
        colour = "#d62728" if r["annotator"] == MODEL else "#1f77b4"
        ax.errorbar(r["loo_agreement"], y, xerr=[[r["loo_agreement"] - r["loo_ci"][0]], [r["loo_ci"][1] - r["loo_agreement"]]],
                    fmt="o", color=colour, capsize=2)
    ax.set_yticks(range(len(rows)), [f"{r['annotator']} ({r['items_with_others']})" for r in rows], fontsize=7)
    ax.set_xlabel("agreement with the other annotators' majority (95% CI)")
    ax.set_title(f"annotators with >= {rep['min_items']} items; the model in red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
