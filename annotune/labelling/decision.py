"""The decision rule: from per-label probabilities to a label.

`argmax` takes the most probable label. A fitted rule adds a log-prior offset per label (for two
labels this is a threshold) chosen on validation rows to maximise macro-F1 (or balanced accuracy),
and a temperature that calibrates the probabilities (least negative log-likelihood on the same
rows). An instruction-tuned model on imbalanced data often ranks the labels well but leans to the
majority label; the offsets undo the lean without touching the ranking within a label.

The rule is fit on validation rows only, never on the split being reported, and records the
arithmetic of the scores it was fit on (`precision`: fp32, bf16-autocast, 4bit-bf16, ...): bf16
scores differ from fp32 ones by a few thousandths, enough to move a threshold, so a rule is
applied only to scores of its own precision (evaluate.py refits it on the adapter's validation
rows, or refuses). Below MIN_ROWS
validation rows it is not fit (offsets 0, temperature 1) and says so: a handful of rows would
fit noise. Above, it is also checked out of sample: offsets fit on one half of the validation rows
must beat argmax on the other half by at least MIN_GAIN, on average over CHECK_SPLITS random halves;
a rule that does not is recorded with its held-out gain but not applied (argmax is used), because
offsets fit on a few rows of a rare label can transfer worse than no offsets at all. MIN_GAIN is
above 0 because a small held-out gain is within the noise of halves of ~120 rows: on the quality
benchmark (bench/quality.py, docs/results.md) the rules of tuned models applied on gains of +0.002
and +0.012 cost 0.038 and 0.027 macro-F1 on the test rows, while gains above 0.1 held.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import decision_objectives, label_metric

MIN_ROWS = 40
CHECK_SPLITS = 5
MIN_GAIN = 0.02  # held-out gain (of the objective) a rule needs to be applied
ESTIMATED_TOP_MARGIN = 1e-6  # a ruled estimate at the top ranks just below a measured top (expected_score)
OFFSET_GRID = np.round(np.arange(-6.0, 6.01, 0.25), 2)
TEMPERATURE_GRID = np.exp(np.linspace(np.log(0.2), np.log(20.0), 61))


@dataclass
class DecisionRule:
    labels: list
    offsets: list = field(default_factory=list)  # added to the log-probabilities, one per label
    temperature: float = 1.0  # (log-probabilities + offsets) / temperature: calibrates, never changes the label
    objective: str = "macro_f1"
    fitted_on: int = 0  # validation rows the rule was fit on (0: not fit)
    heldout_gain: float | None = None  # mean gain of half-fit offsets on the other half (see the docstring)
    note: str = "argmax"
    precision: str | None = None  # the scores' arithmetic it was fit on (models.compute_precision); None: unrecorded

    def __post_init__(self):
        self.offsets = list(self.offsets) or [0.0] * len(self.labels)

    @property
    def fitted(self) -> bool:
        """True when the rule is to be applied: fit, and better than argmax out of sample by MIN_GAIN."""
        return rule_applies(self.to_dict())

    def apply(self, probs) -> tuple:
        """(calibrated probabilities [n, K], predicted labels) under this rule; the label is
        given_label's, the function export.py's README prints."""
        logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
        z = (logp + np.asarray(self.offsets)) / self.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        calibrated = z / z.sum(axis=1, keepdims=True)
        same = {label: label for label in self.labels}
        return calibrated, [given_label(row, self.labels, self.labels, same, self.offsets) for row in logp.tolist()]

    def relabel(self, predictions) -> list:
        """Predictions (dicts with 'prediction' and 'probs') under this rule: its label, the argmax
        label kept as 'argmax_prediction', and the calibrated probabilities."""
        calibrated, labels = self.apply(probs_matrix(predictions, self.labels))
        return [dict(p, prediction=y, argmax_prediction=p["prediction"],
                     calibrated_probs={l: round(float(v), 6) for l, v in zip(self.labels, row)})
                for p, y, row in zip(predictions, labels, calibrated)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None, labels) -> "DecisionRule":
        if not data:
            return cls(list(labels))
        if list(data["labels"]) != list(labels):
            raise ValueError(f"decision rule labels {data['labels']} differ from the task's {list(labels)}")
        return cls(**data)


# ---------------------------------------------------------------- the rule in plain Python
# rule_applies and given_label are the rule as a user of an exported model runs it: export.py's
# README prints their source (with MIN_GAIN) and tests/test_export.py executes it.
def rule_applies(rule) -> bool:
    """Whether a saved decision rule (annotune.json's dict) is applied: fit on validation rows, and
    better than argmax out of sample by MIN_GAIN."""
    return bool(rule) and rule["fitted_on"] > 0 and (rule["heldout_gain"] is None
                                                    or rule["heldout_gain"] >= MIN_GAIN)


def given_label(logp_scored, scored_labels, labels, label_of, offsets=None):
    """The label given to one text: each label's log-probability is the log of the summed
    probabilities of the scored labels merged into it (label_of: scored label -> label given),
    plus the rule's offset for it; the largest wins (the first on a tie)."""
    import math

    best, best_score = None, -math.inf
    for k, name in enumerate(labels):
        parts = [lp for lp, scored in zip(logp_scored, scored_labels) if label_of[scored] == name]
        top = max(parts)
        score = top + math.log(sum(math.exp(lp - top) for lp in parts)) + (offsets[k] if offsets else 0.0)
        if score > best_score:
            best, best_score = name, score
    return best


def plain_python_source() -> str:
    """The rule as self-contained Python, for export.py's README."""
    import inspect

    return f"MIN_GAIN = {MIN_GAIN}\n\n\n" + "\n\n".join(inspect.getsource(f) for f in (rule_applies, given_label))


def probs_matrix(predictions, labels) -> list:
    """[n, K] probabilities, in label order, of predictions (dicts with 'probs': {label: p})."""
    return [[p["probs"][label] for label in labels] for p in predictions]


def expected_score(metrics: dict, rule: DecisionRule) -> float:
    """The validation score of the labels a model will give: its argmax value of the rule's
    objective, plus the rule's held-out gain when the rule is applied (an out-of-sample estimate;
    the gain on the rows the rule was fit on would flatter it). train.py keeps the epoch where
    this is highest. Both objectives top out at 1: an estimate above it (a large gain measured on
    half-size samples) is held just under it, so an epoch whose argmax labels reach the top on the
    validation rows wins over one that an estimate puts there."""
    value = metrics.get(rule.objective, float("nan"))
    if not (rule.fitted and rule.heldout_gain):
        return value
    return min(value + rule.heldout_gain, 1.0 - ESTIMATED_TOP_MARGIN)


def _objective(name, gold, pred, labels) -> float:
    return label_metric(name).fn(gold, pred, labels)


def fit_offsets(logp, gold, labels, objective: str = "macro_f1", rounds: int = 3) -> list:
    """Per-label offsets by coordinate ascent on a grid; the first label is the reference (0). Among
    equally good offsets the one nearest 0 wins, so nothing moves without a gain."""
    labels, gold = list(labels), list(gold)
    offsets = np.zeros(len(labels))
    best = _objective(objective, gold, [labels[i] for i in (logp + offsets).argmax(1)], labels)
    for _ in range(rounds):
        changed = False
        for k in range(1, len(labels)):
            for value in sorted(OFFSET_GRID, key=abs):
                trial = offsets.copy()
                trial[k] = value
                score = _objective(objective, gold, [labels[i] for i in (logp + trial).argmax(1)], labels)
                if score > best + 1e-12:
                    best, offsets, changed = score, trial, True
        if not changed:
            break
    return [float(x) for x in offsets]


def fit_temperature(logp, gold_index, offsets) -> float:
    """The temperature with the least negative log-likelihood of the gold labels."""
    def nll(t):
        z = (logp + offsets) / t
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(z)), gold_index] - np.log(np.exp(z).sum(axis=1))).mean())

    return float(min(TEMPERATURE_GRID, key=nll))


def fit_rule(probs, gold, labels, objective: str = "macro_f1", min_rows: int = MIN_ROWS,
             precision: str | None = None) -> DecisionRule:
    """A DecisionRule fit on validation probabilities and gold labels (see the module docstring);
    precision: the arithmetic the probabilities came from, recorded with the rule."""
    if objective not in decision_objectives():
        raise ValueError(f"objective must be one of {decision_objectives()}")
    labels = list(labels)
    if len(gold) < min_rows:
        return DecisionRule(labels, objective=objective, precision=precision,
                            note=f"not fit: {len(gold)} validation rows < {min_rows}; argmax is used")
    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
    offsets = np.asarray(fit_offsets(logp, gold, labels, objective))
    temperature = fit_temperature(logp, [labels.index(g) for g in gold], offsets)
    gain = heldout_gain(logp, list(gold), labels, objective)
    verdict = "applied" if gain >= MIN_GAIN else f"below {MIN_GAIN}: not applied (argmax is used)"
    return DecisionRule(labels, [float(x) for x in offsets], temperature, objective, len(gold), round(gain, 4),
                        note=f"offsets and temperature fit on {len(gold)} validation rows ({objective}); "
                             f"held-out gain {gain:+.3f}: {verdict}", precision=precision)


def fit_rule_on(predictions, gold, labels, objective: str = "macro_f1", precision: str | None = None) -> DecisionRule:
    """fit_rule on predictions (dicts with 'probs': {label: p}) and their gold labels."""
    return fit_rule(probs_matrix(predictions, labels), list(gold), labels, objective, precision=precision)


def epoch_rule(records, labels, objective: str, precision: str | None, metrics: dict) -> dict:
    """What train.py keeps with an epoch's validation metrics: the rule fit on its validation
    records (dicts with 'probs', 'gold', 'prediction'), the score of the labels it will give
    (expected_score), and whether those labels collapse onto one label."""
    rule = fit_rule_on(records, [r["gold"] for r in records], labels, objective, precision)
    given = rule.apply(probs_matrix(records, labels))[1] if rule.fitted else [r["prediction"] for r in records]
    return {"decision_rule": rule.to_dict(), "selection_score": expected_score(metrics, rule),
            "collapsed": len(labels) > 1 and len(set(given)) == 1}


def heldout_gain(logp, gold, labels, objective: str, seed: int = 0) -> float:
    """Mean gain over argmax, on the other half, of offsets fit on one half of the rows."""
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(CHECK_SPLITS):
        order = rng.permutation(len(gold))
        fit_idx, test_idx = order[: len(gold) // 2], order[len(gold) // 2:]
        offsets = np.asarray(fit_offsets(logp[fit_idx], [gold[i] for i in fit_idx], labels, objective))
        held = [gold[i] for i in test_idx]
        plain = _objective(objective, held, [labels[i] for i in logp[test_idx].argmax(1)], labels)
        moved = _objective(objective, held, [labels[i] for i in (logp[test_idx] + offsets).argmax(1)], labels)
        gains.append(moved - plain)
    return float(np.mean(gains))
