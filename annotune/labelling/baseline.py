"""The cheap alternatives every tuned annotator is compared with, on exactly the rows it was trained
on: a majority-class row, and TF-IDF (word 1-2-grams plus character 2-5-grams) with a class-balanced
logistic regression whose C is chosen on the validation split (by 5-fold cross-validation on the
training rows when the validation split is the one being reported, so nothing is tuned on it).

The features of a set of training texts do not depend on C, so each fold's are built once for the
whole grid; and a fitted baseline is kept for the process (FITTED, by the SHA-256 of its rows,
labels and seed): evaluating the same rows again (another adapter of a run, another split's
report, a benchmark's repeat) gives the same model without fitting it again.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import numpy as np

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
FITTED = OrderedDict()  # key of the rows -> (model, C, how it was chosen); the last few kept
KEEP_FITTED = 8


def _features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                      TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True))


def _classifier(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)


def _pipeline(c: float, seed: int):
    from sklearn.pipeline import make_pipeline

    return make_pipeline(_features(), _classifier(c, seed))


def _grid_predictions(fit_texts, fit_gold, test_texts, seed: int) -> dict:
    """{C: predictions on test_texts} of _pipeline(C) fit on the fit rows, for every C of the grid:
    the features are fit once (they do not depend on C), so each is what _pipeline(C) gives."""
    features = _features().fit(fit_texts)
    x_fit, x_test = features.transform(fit_texts), features.transform(test_texts)
    return {c: _classifier(c, seed).fit(x_fit, fit_gold).predict(x_test) for c in C_GRID}


def _macro_f1(gold, pred, labels) -> float:
    from .metrics import macro_f1

    return macro_f1(list(gold), list(pred), labels)


def choose_c(train_texts, train_labels, val_texts, val_labels, labels, seed: int = 0) -> tuple:
    """(C, how it was chosen): the grid value with the best macro-F1 on the validation rows, or by
    stratified 5-fold cross-validation on the training rows when no validation rows are given."""
    scores = {}
    if val_texts:
        for c, predicted in _grid_predictions(train_texts, train_labels, val_texts, seed).items():
            scores[c] = _macro_f1(val_labels, predicted, labels)
        return max(C_GRID, key=lambda c: (scores[c], -abs(np.log(c)))), "validation split"
    from sklearn.model_selection import StratifiedKFold

    counts = np.unique(train_labels, return_counts=True)[1]
    folds = int(min(5, counts.min())) if len(counts) > 1 else 0
    if folds < 2:
        return 1.0, "default (too few rows per label to cross-validate)"
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    texts, gold = np.asarray(train_texts, dtype=object), np.asarray(train_labels, dtype=object)
    preds = {c: np.empty(len(gold), dtype=object) for c in C_GRID}
    for fit_idx, test_idx in splitter.split(texts, gold):
        for c, predicted in _grid_predictions(texts[fit_idx], gold[fit_idx], texts[test_idx], seed).items():
            preds[c][test_idx] = predicted
    for c in C_GRID:
        scores[c] = _macro_f1(gold, preds[c], labels)
    return max(C_GRID, key=lambda c: (scores[c], -abs(np.log(c)))), f"{folds}-fold cross-validation on train"


class TfidfBaseline:
    """TF-IDF + class-balanced logistic regression, as an annotator of labelled rows."""

    def __init__(self, labels, seed: int = 0):
        self.labels, self.seed = list(labels), seed
        self.model, self.c, self.chosen_by = None, None, None

    def fit(self, train_rows, val_rows=None) -> "TfidfBaseline":
        texts, gold = [r["text"] for r in train_rows], [r["label"] for r in train_rows]
        val_rows = val_rows or []
        val_texts, val_gold = [r["text"] for r in val_rows], [r["label"] for r in val_rows]
        key = hashlib.sha256(json.dumps([texts, gold, val_texts, val_gold, self.labels, self.seed],
                                        ensure_ascii=False).encode()).hexdigest()
        if key not in FITTED:
            c, chosen_by = choose_c(texts, gold, val_texts, val_gold, self.labels, self.seed)
            FITTED[key] = (_pipeline(c, self.seed).fit(texts, gold), c, chosen_by)
            while len(FITTED) > KEEP_FITTED:
                FITTED.popitem(last=False)
        FITTED.move_to_end(key)
        self.model, self.c, self.chosen_by = FITTED[key]
        return self

    def probs(self, rows) -> np.ndarray:
        """[n, n_labels] in the task's label order (a label absent from training gets 0)."""
        raw = self.model.predict_proba([r["text"] for r in rows])
        out = np.zeros((len(rows), len(self.labels)))
        for j, label in enumerate(self.model.classes_):
            out[:, self.labels.index(label)] = raw[:, j]
        return out


def majority_label(train_rows) -> str:
    """The most frequent training label (ties: the first in sorted order, for determinism)."""
    from collections import Counter

    counts = Counter(r["label"] for r in train_rows)
    return sorted(counts, key=lambda l: (-counts[l], l))[0]


MAJORITY_NAME, TFIDF_NAME = "baseline: majority", "baseline: tf-idf + logreg"  # their rows in evaluate.py's tables


def baseline_results(rows_by_split: dict, train_ids, split: str, rows: list, labels, n_boot: int = 1000,
                     seed: int = 0) -> list:
    """Result entries (as evaluate.py makes for models) for the majority class and TF-IDF + LogReg,
    both trained on the training rows with `train_ids` (all training rows when None) and scored on
    `rows` of `split`."""
    from .metrics import classification_metrics

    train = rows_by_split.get("train") or []
    if train_ids is not None:
        wanted = set(train_ids)
        train = [r for r in train if r["id"] in wanted]
    if not train:
        return []
    val = rows_by_split.get("validation") if split != "validation" else None
    gold = [r["label"] for r in rows]
    majority = majority_label(train)
    tfidf = TfidfBaseline(labels, seed).fit(train, val)
    probs = tfidf.probs(rows)
    entries = []
    for name, preds, p, how in (
            (MAJORITY_NAME, [majority] * len(rows), None, f"always '{majority}'"),
            (TFIDF_NAME, [labels[i] for i in probs.argmax(1)], probs,
             f"C={tfidf.c} chosen by {tfidf.chosen_by}")):
        metrics = classification_metrics(gold, preds, labels, p, n_boot, seed)
        metrics.update(mode="baseline", baseline=how, train_rows=len(train), train_ids=sorted(r["id"] for r in train))
        records = [{"id": r["id"], "text": r["text"], "gold": g, "prediction": y} for r, g, y in zip(rows, gold, preds)]
        entries.append({"name": name, "split": split, "metrics": metrics, "records": records, "epoch": None,
                        "adapter": None, "row_label": name})
    return entries
