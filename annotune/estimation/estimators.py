"""The estimators of a corpus quantity, one registry (ESTIMATORS): each entry says what it is, how it
is computed from the model's outputs and the human sample, and how it is shown (its column in
estimates.md and estimates.json, its colour in forest.png, its line in estimate.py --help, the
flags of its parameters). findings.py runs every registered estimator on every quantity (shares,
shares by group, differences, regression coefficients); adding an entry here is all a new
estimator needs (tests/test_registries.py registers one and finds it in every output).

An estimator's `fit` gets an `Inputs` and returns an inference.Estimate. One that uses the human
sample gets "not estimable" where a group holds fewer than 2 labelled rows, its differences from
the influence of each row (inference.contrast), and a t interval; one that does not (naive) gets
iid differences and a normal interval.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import inference
from ..base.cli import Parameter


@dataclass
class ModelOutputs:
    """The model's outputs on every corpus row: `probs` (N, K) or None (a corpus labelled by
    generation), `hard` (N, K) one-hot labels, the corpus itself (its other columns), and `given`
    (N, K), the labels as the corpus file gives them where they are not `hard` (cross-fitting:
    `hard` is the argmax of the cross-fitted outputs, `given` the ensemble's decided labels)."""
    probs: np.ndarray | None
    hard: np.ndarray
    corpus: object = None
    given: np.ndarray | None = None

    def values(self, kind: str) -> np.ndarray:
        """'probs' (the labels' probabilities; the hard labels where there are none) or 'labels'."""
        return self.probs if kind == "probs" and self.probs is not None else self.hard


@dataclass
class Inputs:
    """One quantity for an estimator: x (N, k) its covariates on every corpus row (a group's
    indicator, regression columns); `label` the label index whose indicator is regressed; the
    model's outputs; the sample (None for an estimator without one) and y, the human 0/1
    indicator of the label on its rows; the link ('identity' or 'logistic'); the estimators'
    options; census(key, f): inference.compress(x, f) computed once per corpus and key."""
    x: np.ndarray
    label: int
    outputs: ModelOutputs
    sample: inference.Sample | None
    y: np.ndarray | None
    link: str
    options: dict
    domain: str = ""
    cache: dict = field(default_factory=dict)

    def census(self, key: str, f: np.ndarray):
        slot = (self.domain, self.label, key)
        if slot not in self.cache:
            self.cache[slot] = inference.compress(self.x, f)
        return self.cache[slot]


@dataclass(frozen=True)
class Estimator:
    """name: its key in estimates.json and column in estimates.md; title: what it is (estimates.md,
    --help); colour: forest.png's; uses_sample: whether it needs human labels."""
    name: str
    title: str
    colour: str
    uses_sample: bool
    fit: Callable
    parameters: tuple = ()


def _naive(i: Inputs) -> inference.Estimate:
    labels = i.outputs.hard if i.outputs.given is None else i.outputs.given  # what a study counting them reports
    return inference.naive(i.x, labels[:, i.label], i.link)


def _classical(i: Inputs) -> inference.Estimate:
    f = i.outputs.hard[:, i.label]  # unused at lam = 0
    return inference.estimate(i.x, f, i.sample, i.y, i.link, "classical", census=i.census("labels", f))


def _ppi(i: Inputs) -> inference.Estimate:
    kind = i.options.get("model_output", "probs")
    f = i.outputs.values(kind)[:, i.label]
    # options["lam"]: a fixed weight instead of the tuned one (benchmarks compare lam = 1, ppi-python's)
    return inference.estimate(i.x, f, i.sample, i.y, i.link, "ppi", lam=i.options.get("lam"),
                              census=i.census(kind, f))


ESTIMATORS = (
    Estimator("naive", "the model's labels as if they were gold (biased by its errors; the interval ignores them)",
              "tab:gray", False, _naive),
    Estimator("classical", "the human sample alone", "tab:blue", True, _classical),
    Estimator("ppi", "prediction-powered: the human sample and the model's outputs on every row (PPI++, its "
                     "weight lam tuned), valid whatever the model's quality", "tab:red", True, _ppi,
              (Parameter("model_output", "probs", "what ppi uses: the model's probabilities or its 0/1 labels "
                                                  "(default: probs; see docs/results.md, 'From labels to findings')",
                         ("probs", "labels")),)),
)


def registered(names=None) -> list:
    """The registered estimators (those named, in registry order)."""
    return [e for e in ESTIMATORS if names is None or e.name in names]


def parameters() -> list:
    """Every registered estimator's parameters (one flag each)."""
    return [p for e in ESTIMATORS for p in e.parameters]


def default_options() -> dict:
    return {p.name: p.default for p in parameters()}


def describe() -> str:
    """One line per estimator, for estimate.py --help."""
    return "; ".join(f"{e.name}: {e.title}" for e in ESTIMATORS)
