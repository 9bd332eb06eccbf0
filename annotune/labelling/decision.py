"""The decision rule: from per-label probabilities to a label.

`argmax` takes the most probable label. A fitted rule adds a log-prior offset per label (for two
labels this is a threshold) chosen on validation rows to maximise macro-F1 (or balanced accuracy),
and a temperature that calibrates the probabilities (least negative log-likelihood on the same
rows). An instruction-tuned model on imbalanced data often ranks the labels well but leans to the
majority label; the offsets undo the lean without touching the ranking within a label.

Which rows: every validation row (`rule_rows`: all of them up to RULE_MAX_ROWS, a sample fixed by the
split alone), the same rows in train.py and evaluate.py; never the split being reported. With
cross-fitted (K-fold) probabilities every labelled row (ensemble.py).

Offsets: coordinate ascent on a 0.25-nat grid of the objective averaged over the rows and
SMOOTH_RESAMPLES bootstrap resamples of them (seeded), then refined on a finer grid to the soft peak
of that objective averaged over a window of offsets (refine_offsets). A coarse grid's best point
can jump a whole step when bf16's rounding moves the scores, and relabel every row whose margin
lies in the step; the refined peak moves little (a rule fit on bf16-rounded scores gives the
labels of one fit on fp32 scores on 98-100% of rows, tests/test_decision.py).

Applied only on evidence: the offsets are refit on 4/5 of the rows and used on the fifth, every row
out of fold, CHECK_REPEATS times over; the gain of those out-of-fold labels over argmax (the
objective, mean over the repeats) gets a bootstrap interval over rows, and the rule is applied when
its one-sided 95% lower bound (`gain_lower`) is above 0. On a calibrated model with balanced labels,
where no offset can help, bench/decision_power.py applies a rule on 1-4% of seeds (the test on
halves it replaced: 7-13% below 200 rows); a gain of 0.18 macro-F1 is shown on 70% of seeds with
100 validation rows and 94% with 200. Below MIN_ROWS validation rows nothing is fit (offsets 0,
temperature 1) and the note says so: there even that gain is shown on under 60% of seeds.

The rule records the arithmetic of the scores it was fit on (`precision`: fp32, bf16-autocast, ...);
evaluate.py applies it to scores of that precision and refits it, on the same rows, otherwise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import WeightedObjective, decision_objectives, resample_weights

MIN_ROWS = 100  # validation rows below which no rule is fit (see bench/decision_power.py)
RULE_MAX_ROWS = 2000  # validation rows a rule is fit on at most (rule_rows)
SMOOTH_RESAMPLES = 32  # bootstrap resamples the offsets' objective is averaged over
REFINE_STEP, REFINE_WINDOW, REFINE_REACH = 0.05, 0.5, 0.75  # nats: see refine_offsets
REFINE_SOFTNESS = 0.003  # objective units: steps this far below the peak weigh 1/e as much
REFINE_SHRINK, REFINE_ROUNDS = 0.0005, 3  # objective units per nat squared; rounds over the labels
CHECK_FOLDS, CHECK_REPEATS = 5, 4  # the cross-fitted gain: K folds, repeated
CHECK_BOOT = 1000  # bootstrap resamples of the gain's interval
LEGACY_MIN_GAIN = 0.02  # a rule saved before gain_lower was recorded was applied at this mean held-out gain
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
    heldout_gain: float | None = None  # cross-fitted gain of the offsets over argmax (see the docstring)
    gain_lower: float | None = None  # its one-sided 95% lower bound: the rule is applied when above 0
    note: str = "argmax"
    precision: str | None = None  # the scores' arithmetic it was fit on (models.compute_precision); None: unrecorded
    fit_later: bool = False  # training scored a sample of the validation rows: evaluate.py fits it on all of them

    def __post_init__(self):
        self.offsets = list(self.offsets) or [0.0] * len(self.labels)

    @property
    def fitted(self) -> bool:
        """True when the rule is to be applied: fit, and its out-of-sample gain over argmax shown."""
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
# README prints their source (with LEGACY_MIN_GAIN) and tests/test_export.py executes it.
def rule_applies(rule) -> bool:
    """Whether a saved decision rule (annotune.json's dict) is applied: fit on validation rows, and
    its cross-fitted gain over argmax shown (gain_lower, a one-sided 95% lower bound, above 0). A
    rule saved before gain_lower was recorded keeps the test it was saved under (mean held-out
    gain at least LEGACY_MIN_GAIN), so its labels do not change."""
    if not rule or rule["fitted_on"] <= 0:
        return False
    if rule.get("gain_lower") is not None:
        return rule["gain_lower"] > 0
    return rule["heldout_gain"] is None or rule["heldout_gain"] >= LEGACY_MIN_GAIN


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

    return f"LEGACY_MIN_GAIN = {LEGACY_MIN_GAIN}\n\n\n" + "\n\n".join(inspect.getsource(f) for f in (rule_applies, given_label))


def probs_matrix(predictions, labels) -> list:
    """[n, K] probabilities, in label order, of predictions (dicts with 'probs': {label: p})."""
    return [[p["probs"][label] for label in labels] for p in predictions]


def expected_score(metrics: dict, rule: DecisionRule) -> float:
    """The validation score of the labels a model will give: its argmax value of the rule's
    objective, plus the rule's held-out gain when the rule is applied (an out-of-sample estimate;
    the gain on the rows the rule was fit on would flatter it). train.py keeps the epoch where
    this is highest. Both objectives top out at 1: an estimate above it (a large gain measured out of
    fold) is held just under it, so an epoch whose argmax labels reach the top on the
    validation rows wins over one that an estimate puts there."""
    value = metrics.get(rule.objective, float("nan"))
    if not (rule.fitted and rule.heldout_gain):
        return value
    return min(value + rule.heldout_gain, 1.0 - ESTIMATED_TOP_MARGIN)


def rule_rows(validation_rows: list) -> list:
    """The validation rows a rule is fit on: all of them up to RULE_MAX_ROWS, a sample that depends on
    the rows alone (not on a run's seed), so train.py and evaluate.py fit on the same rows."""
    from ..data.examples import sample_rows

    return sample_rows(validation_rows, RULE_MAX_ROWS, 0)


def fit_offsets(logp, gold, labels, objective: str = "macro_f1", rounds: int = 3, smooth: int = SMOOTH_RESAMPLES,
                seed: int = 0) -> list:
    """Per-label offsets by coordinate ascent on OFFSET_GRID of the objective averaged over the rows
    and `smooth` bootstrap resamples (0: the rows alone); the first label is the reference (0).
    Among equally good offsets the one nearest 0 wins, so nothing moves without a gain."""
    labels, logp = list(labels), np.asarray(logp, dtype=float)
    score = WeightedObjective(objective, [labels.index(g) for g in gold], len(labels))
    weights = resample_weights(len(logp), smooth, seed)
    offsets = np.zeros(len(labels))
    best = score(logp, weights).mean()
    for _ in range(rounds):
        changed = False
        for k in range(1, len(labels)):
            for value in sorted(OFFSET_GRID, key=abs):
                trial = offsets.copy()
                trial[k] = value
                value_score = score(logp + trial, weights).mean()
                if value_score > best + 1e-12:
                    best, offsets, changed = value_score, trial, True
        if not changed:
            break
    return [float(x) for x in offsets]


def refine_offsets(logp, gold, labels, offsets, objective: str = "macro_f1", seed: int = 0) -> list:
    """Offsets moved within REFINE_REACH of their grid values to the peak of the bootstrap-averaged
    objective further averaged over a window of +-REFINE_WINDOW (a moving average on a REFINE_STEP
    grid) less REFINE_SHRINK * offset^2 (offsets that move every label but the first alike leave
    macro-F1 nearly unchanged: the shrinkage picks one point of such a ridge), the peak taken soft
    (steps weighted by exp(value / REFINE_SOFTNESS)), REFINE_ROUNDS rounds over the labels. Such a
    peak moves little when the scores move a little, where the best of a coarse grid can jump a whole
    step (and relabel every row whose margin lies in it)."""
    labels, logp, offsets = list(labels), np.asarray(logp, dtype=float), np.asarray(offsets, dtype=float)
    score = WeightedObjective(objective, [labels.index(g) for g in gold], len(labels))
    weights = resample_weights(len(logp), SMOOTH_RESAMPLES, seed)
    steps = np.arange(-REFINE_REACH, REFINE_REACH + 1e-9, REFINE_STEP)
    half = int(round(REFINE_WINDOW / REFINE_STEP))
    for _ in range(REFINE_ROUNDS):
        for k in range(1, len(labels)):
            values = offsets[k] + np.arange(-REFINE_REACH - REFINE_WINDOW, REFINE_REACH + REFINE_WINDOW + 1e-9,
                                            REFINE_STEP)
            curve = np.array([score(logp + np.r_[offsets[:k], v, offsets[k + 1:]], weights).mean() for v in values])
            smooth = np.convolve(curve, np.ones(2 * half + 1) / (2 * half + 1), mode="valid")  # one per step
            smooth -= REFINE_SHRINK * (offsets[k] + steps) ** 2  # along a flat ridge, the offsets nearest 0
            weight = np.exp((smooth - smooth.max()) / REFINE_SOFTNESS)  # a soft peak: no jump between near-equal steps
            offsets[k] = round(float(offsets[k] + (steps * weight).sum() / weight.sum()), 4)
    return [float(x) for x in offsets]


def fit_temperature(logp, gold_index, offsets) -> float:
    """The temperature with the least negative log-likelihood of the gold labels."""
    def nll(t):
        z = (logp + offsets) / t
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(z)), gold_index] - np.log(np.exp(z).sum(axis=1))).mean())

    return float(min(TEMPERATURE_GRID, key=nll))


def crossfit_gain(logp, gold, labels, objective: str, seed: int = 0) -> tuple:
    """(gain, one-sided 95% lower bound): the objective of out-of-fold offset labels (offsets fit on
    the other CHECK_FOLDS - 1 folds, CHECK_REPEATS random fold splits) minus argmax's, the mean over
    the repeats; the bound from CHECK_BOOT bootstrap resamples of the rows, each repeat's labels
    and argmax's scored on the same resample. The folds' offsets are the grid's (fit_offsets): the
    refinement steadies the offsets against rounding, it is not what makes a gain, and leaving it
    out halves the test's cost."""
    logp, gold, labels = np.asarray(logp, dtype=float), list(gold), list(labels)
    rng = np.random.default_rng(seed)
    out_of_fold = []
    for _ in range(CHECK_REPEATS):
        folds = np.array_split(rng.permutation(len(gold)), CHECK_FOLDS)
        z = np.empty_like(logp)
        for held in folds:
            fit = np.setdiff1d(np.arange(len(gold)), held)
            offsets = fit_offsets(logp[fit], [gold[i] for i in fit], labels, objective, seed=int(rng.integers(1 << 31)))
            z[held] = logp[held] + np.asarray(offsets)
        out_of_fold.append(z)
    score = WeightedObjective(objective, [labels.index(g) for g in gold], len(labels))
    weights = resample_weights(len(gold), CHECK_BOOT, seed + 1)
    plain = score(logp, weights)
    gains = np.mean([score(z, weights) for z in out_of_fold], axis=0) - plain  # [1 + CHECK_BOOT]
    return float(gains[0]), float(np.nanpercentile(gains[1:], 5))


def fit_rule(probs, gold, labels, objective: str = "macro_f1", min_rows: int | None = None,
             precision: str | None = None) -> DecisionRule:
    """A DecisionRule fit on validation probabilities and gold labels (see the module docstring);
    precision: the arithmetic the probabilities came from, recorded with the rule."""
    if objective not in decision_objectives():
        raise ValueError(f"objective must be one of {decision_objectives()}")
    labels, min_rows = list(labels), MIN_ROWS if min_rows is None else min_rows
    if len(gold) < min_rows:
        return DecisionRule(labels, objective=objective, precision=precision,
                            note=f"not fit: {len(gold)} validation rows < {min_rows}, too few to show a gain; "
                                 "argmax is used")
    logp = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
    offsets = np.asarray(refine_offsets(logp, gold, labels, fit_offsets(logp, gold, labels, objective), objective))
    temperature = fit_temperature(logp, [labels.index(g) for g in gold], offsets)
    gain, lower = crossfit_gain(logp, list(gold), labels, objective)
    verdict = "applied" if lower > 0 else "not shown: not applied (argmax is used)"
    return DecisionRule(labels, [float(x) for x in offsets], temperature, objective, len(gold), round(gain, 4),
                        round(lower, 4),
                        note=f"offsets and temperature fit on {len(gold)} validation rows ({objective}); "
                             f"cross-fitted gain {gain:+.3f}, one-sided 95% lower bound {lower:+.3f}: {verdict}",
                        precision=precision)


def fit_rule_on(predictions, gold, labels, objective: str = "macro_f1", precision: str | None = None) -> DecisionRule:
    """fit_rule on predictions (dicts with 'probs': {label: p}) and their gold labels."""
    return fit_rule(probs_matrix(predictions, labels), list(gold), labels, objective, precision=precision)


def epoch_rule(records, labels, objective: str, precision: str | None, metrics: dict, every_row: bool = True) -> dict:
    """What train.py keeps with an epoch's validation metrics: the rule fit on its validation
    records (dicts with 'probs', 'gold', 'prediction'), the score of the labels it will give
    (expected_score), and whether those labels collapse onto one label. every_row False (the
    records are a sample of the validation rows): no rule, marked to be fit by evaluate.py."""
    if every_row:
        rule = fit_rule_on(records, [r["gold"] for r in records], labels, objective, precision)
    else:
        rule = DecisionRule(list(labels), objective=objective, precision=precision, fit_later=True,
                            note=f"not fit in training: {len(records)} validation rows scored, a sample; "
                                 "evaluate.py fits it on every validation row")
    given = rule.apply(probs_matrix(records, labels))[1] if rule.fitted else [r["prediction"] for r in records]
    return {"decision_rule": rule.to_dict(), "selection_score": expected_score(metrics, rule),
            "collapsed": len(labels) > 1 and len(set(given)) == 1}
