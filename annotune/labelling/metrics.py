"""Metrics: one implementation, used by train.py (in-training evaluation) and evaluate.py.

Classification: the label metrics of LABEL_METRICS, the registry that every output reads (a metric
added there alone appears in metrics.json, log.jsonl, comparison.md, the per-epoch table, the paired
differences and, if it is one, among the decision rule's objectives): accuracy, balanced accuracy,
macro/weighted F1, Cohen's kappa, with seeded bootstrap 95% CIs where marked; the bootstrapped ones
are counted with numpy (equal to scikit-learn's), since a bootstrap calls them thousands of times.
Beside them: per-class precision/recall/F1, the confusion matrix, expected calibration error and
ranking AUC from per-label probabilities. A prediction outside the label set ("invalid", from
generate mode) counts as wrong and never enters the label list given to scikit-learn.
Generation: ROUGE-1/2/L/Lsum with stemming (rouge-score, best over references), exact match,
BERTScore F1 with a local model. ROUGE and BERTScore are never averaged into one number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data.labels import INVALID

PRIMARY_METRIC = {"classification": "macro_f1", "generation": "rougeL"}


@dataclass(frozen=True)
class LabelMetric:
    """A metric of gold and predicted labels: fn(gold, pred, labels) -> float."""
    key: str  # its name in metrics.json and log.jsonl
    title: str  # its column in comparison.md and the per-epoch table
    fn: Callable
    ci: bool = True  # a bootstrap 95% interval beside it (fn is called ~1,000 times)
    paired: bool = False  # differences against TF-IDF, the untuned base and the first adapter, paired
    objective: bool = False  # a decision rule may maximise it (--decision_objective)
    per_epoch: bool = True  # a column of the per-epoch table (evaluate.py --table)


def accuracy(gold, pred) -> float:
    return float(np.mean(np.asarray(gold, dtype=object) == np.asarray(pred, dtype=object))) if len(gold) else float("nan")


# accuracy, macro_f1 and balanced_accuracy are counted with numpy: scikit-learn's input checks cost
# ~3 ms a call, and a bootstrap makes thousands of calls (tested equal to scikit-learn's).
def macro_f1(gold, pred, labels) -> float:
    """Macro-F1 over the labels present in gold or predicted (as scikit-learn does by default),
    never over INVALID: an invalid prediction is a miss of its gold label."""
    gold, pred = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    seen = set(gold) | set(pred)
    scores = []
    for label in (l for l in labels if l in seen):
        is_gold, is_pred = gold == label, pred == label
        hits = int(np.sum(is_gold & is_pred))
        scores.append(2 * hits / (int(is_gold.sum()) + int(is_pred.sum())))  # 2TP / (2TP + FP + FN)
    return float(np.mean(scores)) if scores else float("nan")


def balanced_accuracy(gold, pred, labels) -> float:
    """Mean recall over the classes that occur in gold (an invalid prediction is a miss)."""
    gold, pred = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    if not len(gold):
        return float("nan")
    return float(np.mean([np.mean(pred[gold == label] == label) for label in dict.fromkeys(gold)]))


class WeightedObjective:
    """macro_f1 or balanced_accuracy (counted as macro_f1 and balanced_accuracy above count them) of
    labels argmax(z) under row weights: one value per weight vector, from weighted confusion matrices
    (one matrix product), so a bootstrap-averaged objective (decision.py's offsets) costs about what
    one plain one does."""

    def __init__(self, name: str, gold_index, n_labels: int):
        if name not in ("macro_f1", "balanced_accuracy"):
            raise ValueError(f"objective must be macro_f1 or balanced_accuracy, not {name!r}")
        self.name, self.gold, self.k = name, np.asarray(gold_index), n_labels

    def __call__(self, z, weights) -> np.ndarray:
        """[n, K] scores (labels by argmax) and [B, n] row weights -> [B] objective values."""
        cells = self.gold * self.k + np.asarray(z).argmax(1)
        onehot = np.zeros((len(cells), self.k * self.k))
        onehot[np.arange(len(cells)), cells] = 1.0
        conf = (weights @ onehot).reshape(-1, self.k, self.k)  # [B, gold, predicted]
        hits, gold_n, pred_n = np.einsum("bkk->bk", conf), conf.sum(2), conf.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.name == "macro_f1":  # over the labels present in gold or predicted
                return np.nanmean(np.where(gold_n + pred_n > 0, 2 * hits / (gold_n + pred_n), np.nan), axis=1)
            return np.nanmean(np.where(gold_n > 0, hits / gold_n, np.nan), axis=1)


def resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples + 1, n] row weights: the rows themselves, then bootstrap resamples (counts)."""
    rng = np.random.default_rng(seed)
    return np.vstack([np.ones(n)] + [np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])


def weighted_f1(gold, pred, labels) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, labels=list(labels), average="weighted", zero_division=0)) if len(gold) else float("nan")


def bootstrap_ci(gold, pred, fn, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list:
    """Percentile bootstrap interval of fn(gold, pred) over resampled examples (seeded)."""
    gold, pred = np.asarray(gold, dtype=object), np.asarray(pred, dtype=object)
    if len(gold) < 2 or not n_boot:  # --bootstrap 0: no interval
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(gold), len(gold))
        stats.append(fn(gold[idx], pred[idx]))
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def paired_difference(gold, pred_a, pred_b, fn, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """fn(gold, pred_a) - fn(gold, pred_b) on the same rows, with a percentile bootstrap interval that
    resamples the rows once for both: the interval of the difference itself, which two separate
    intervals overstate (their noise from which rows were drawn is shared)."""
    gold, a, b = (np.asarray(x, dtype=object) for x in (gold, pred_a, pred_b))
    diff = float(fn(gold, a) - fn(gold, b))
    if len(gold) < 2 or not n_boot:
        return {"diff": diff, "ci95": [float("nan"), float("nan")]}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(gold), len(gold))
        stats.append(fn(gold[idx], a[idx]) - fn(gold[idx], b[idx]))
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"diff": diff, "ci95": [float(lo), float(hi)]}


def expected_calibration_error(probs, gold_index, n_bins: int = 10) -> dict:
    """ECE of the top-label confidence, and the per-bin table for a reliability plot."""
    probs = np.asarray(probs, dtype=float)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(gold_index)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        upper = conf <= edges[i + 1] if i == n_bins - 1 else conf < edges[i + 1]
        in_bin = (conf >= edges[i]) & upper
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - conf[in_bin].mean())
            ece += in_bin.mean() * gap
            bins.append({"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": int(in_bin.sum()),
                         "accuracy": float(correct[in_bin].mean()), "confidence": float(conf[in_bin].mean())})
    return {"ece": float(ece), "bins": bins}


def cohen_kappa(a, b, labels) -> float:
    from sklearn.metrics import cohen_kappa_score

    a = [x if x in labels else INVALID for x in a]
    b = [x if x in labels else INVALID for x in b]
    all_labels = list(labels) + ([INVALID] if INVALID in set(a) | set(b) else [])
    value = cohen_kappa_score(a, b, labels=all_labels)
    return float(value) if np.isfinite(value) else float("nan")


LABEL_METRICS = (
    LabelMetric("accuracy", "accuracy", lambda gold, pred, labels: accuracy(gold, pred)),
    LabelMetric("balanced_accuracy", "balanced acc.", balanced_accuracy, paired=True, objective=True,
                per_epoch=False),
    LabelMetric("macro_f1", "macro-F1", macro_f1, paired=True, objective=True),
    LabelMetric("weighted_f1", "weighted F1", weighted_f1, ci=False, per_epoch=False),
    LabelMetric("cohen_kappa", "kappa", lambda gold, pred, labels: cohen_kappa(gold, pred, labels), ci=False,
                per_epoch=False),
)


def label_metric(key: str) -> LabelMetric:
    return next(m for m in LABEL_METRICS if m.key == key)


def decision_objectives() -> tuple:
    """What a decision rule may maximise (train.py and evaluate.py --decision_objective)."""
    return tuple(m.key for m in LABEL_METRICS if m.objective)


def classification_metrics(gold, pred, labels, probs=None, n_boot: int = 1000, seed: int = 0) -> dict:
    """All classification metrics for gold and predicted label names (pred may hold invalid outputs)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    gold, labels = list(gold), list(labels)
    pred = [p if p in labels else INVALID for p in pred]
    precision, recall, f1, support = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    out = {"n": len(gold)}
    out.update((m.key, m.fn(gold, pred, labels)) for m in LABEL_METRICS)
    out.update({
        "invalid": int(sum(p == INVALID for p in pred)),
        "per_class": {l: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for l, p, r, f, s in zip(labels, precision, recall, f1, support)},
        "labels": labels,
        "confusion_matrix": confusion_matrix(gold, pred, labels=labels + [INVALID]).tolist(),
        "ci95": {m.key: bootstrap_ci(gold, pred, lambda g, p, fn=m.fn: fn(g, p, labels), n_boot, seed)
                 for m in LABEL_METRICS if m.ci},
    })
    if out["invalid"]:
        valid = [i for i, p in enumerate(pred) if p != INVALID]
        g, p = [gold[i] for i in valid], [pred[i] for i in valid]
        out["valid_only"] = {"n": len(valid), "accuracy": accuracy(g, p), "macro_f1": macro_f1(g, p, labels)}
    if probs is not None and len(gold):
        index = {l: i for i, l in enumerate(labels)}
        out["calibration"] = expected_calibration_error(probs, [index[g] for g in gold])
        out["ece"] = out["calibration"]["ece"]
        out["ranking_auc"] = ranking_auc(probs, [index[g] for g in gold])
    return out


def ranking_auc(probs, gold_index) -> float:
    """Mean one-vs-rest ROC AUC of each label's probability, over labels with gold rows in and out:
    whether the model ranks the rows at all, whatever its decision rule (0.5 = no signal). It tells a
    collapsed model that ranks well (a decision-rule problem) from one that has nothing to rank."""
    from sklearn.metrics import roc_auc_score

    probs, gold_index = np.asarray(probs, dtype=float), np.asarray(gold_index)
    aucs = [roc_auc_score(gold_index == k, probs[:, k]) for k in range(probs.shape[1])
            if 0 < (gold_index == k).sum() < len(gold_index)]
    return float(np.mean(aucs)) if aucs else float("nan")


# -------------------------------------------------------------------- generation
def rouge_scores(predictions, references_list) -> list:
    """Per-example ROUGE F-measures (best over each example's references)."""
    from rouge_score import rouge_scorer

    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    rows = []
    for pred, refs in zip(predictions, references_list):
        best = {k: 0.0 for k in keys}
        # rougeLsum splits summaries on newlines; keep the text's own sentence breaks.
        for ref in refs or [""]:
            scores = scorer.score(ref, pred)
            for k in keys:
                best[k] = max(best[k], scores[k].fmeasure)
        rows.append(best)
    return rows


def bertscore_f1(predictions, references_list, model_path: str, num_layers: int, batch_size: int = 32) -> list:
    """Per-example BERTScore F1 (best over references) with a local model; no baseline rescaling."""
    from bert_score import score

    flat_pred, flat_ref, owner = [], [], []
    for i, (pred, refs) in enumerate(zip(predictions, references_list)):
        for ref in refs or [""]:
            flat_pred.append(pred if pred.strip() else ".")
            flat_ref.append(ref)
            owner.append(i)
    _, _, f1 = score(flat_pred, flat_ref, model_type=model_path, num_layers=num_layers, batch_size=batch_size,
                     verbose=False, device="cpu")
    best = [0.0] * len(predictions)
    for i, value in zip(owner, f1.tolist()):
        best[i] = max(best[i], float(value))
    return best


def generation_metrics(predictions, references_list, bertscore_model: str | None = None,
                       bertscore_layers: int | None = None, n_boot: int = 1000, seed: int = 0) -> tuple:
    """(summary, per_example): mean ROUGE-1/2/L/Lsum, exact match, optional BERTScore F1, with CIs."""
    per_example = rouge_scores(predictions, references_list)
    for row, pred, refs in zip(per_example, predictions, references_list):
        row["exact_match"] = float(any(" ".join(pred.split()).casefold() == " ".join(r.split()).casefold() for r in refs))
    if bertscore_model:
        for row, value in zip(per_example, bertscore_f1(predictions, references_list, bertscore_model, bertscore_layers)):
            row["bertscore_f1"] = value
    summary = {"n": len(predictions)}
    keys = list(per_example[0]) if per_example else []
    for key in keys:
        values = np.array([row[key] for row in per_example])
        summary[key] = float(values.mean())
    if per_example:
        summary["ci95"] = {key: mean_ci([row[key] for row in per_example], n_boot, seed) for key in keys}
    if bertscore_model:
        summary["bertscore_model"] = bertscore_model
        summary["bertscore_num_layers"] = bertscore_layers
    return summary, per_example


def mean_ci(values, n_boot, seed):
    """Percentile bootstrap interval of the mean of `values` (seeded); NaNs under 2 values."""
    values = np.asarray(values, dtype=float)
    idx = np.arange(len(values))
    return bootstrap_ci(idx, idx, lambda g, p: float(values[g.astype(int)].mean()), n_boot, seed)


def primary_metric(task_type: str) -> str:
    return PRIMARY_METRIC[task_type]
