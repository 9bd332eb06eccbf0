"""The cheap alternatives every tuned annotator is compared with, on exactly the rows it was trained
on: a majority-class row, and TF-IDF (word 1-2-grams plus character 2-5-grams) with a class-balanced
logistic regression whose C is chosen on the validation split (by 5-fold cross-validation on the
training rows when the validation split is the one being reported, so nothing is tuned on it).
"""
from __future__ import annotations

import numpy as np

C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _pipeline(c: float, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True))
    return make_pipeline(features, LogisticRegression(C=c, class_weight="balanced", max_iter=3000,
                                                      random_state=seed))


def _macro_f1(gold, pred, labels) -> float:
    from .metrics import macro_f1

    return macro_f1(list(gold), list(pred), labels)


def choose_c(train_texts, train_labels, val_texts, val_labels, labels, seed: int = 0) -> tuple:
    """(C, how it was chosen): the grid value with the best macro-F1 on the validation rows, or by
    stratified 5-fold cross-validation on the training rows when no validation rows are given."""
    scores = {}
    if val_texts:
        for c in C_GRID:
            model = _pipeline(c, seed).fit(train_texts, train_labels)
            scores[c] = _macro_f1(val_labels, model.predict(val_texts), labels)
        return max(C_GRID, key=lambda c: (scores[c], -abs(np.log(c)))), "validation split"
    from sklearn.model_selection import StratifiedKFold

    counts = np.unique(train_labels, return_counts=True)[1]
    folds = int(min(5, counts.min())) if len(counts) > 1 else 0
    if folds < 2:
        return 1.0, "default (too few rows per label to cross-validate)"
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    texts, gold = np.asarray(train_texts, dtype=object), np.asarray(train_labels, dtype=object)
    for c in C_GRID:
        preds = np.empty(len(gold), dtype=object)
        for fit_idx, test_idx in splitter.split(texts, gold):
            preds[test_idx] = _pipeline(c, seed).fit(texts[fit_idx], gold[fit_idx]).predict(texts[test_idx])
        scores[c] = _macro_f1(gold, preds, labels)
    return max(C_GRID, key=lambda c: (scores[c], -abs(np.log(c)))), f"{folds}-fold cross-validation on train"


class TfidfBaseline:
    """TF-IDF + class-balanced logistic regression, as an annotator of labelled rows."""

    def __init__(self, labels, seed: int = 0):
        self.labels, self.seed = list(labels), seed
        self.model, self.c, self.chosen_by = None, None, None

    def fit(self, train_rows, val_rows=None) -> "TfidfBaseline":
        texts, gold = [r["text"] for r in train_rows], [r["label"] for r in train_rows]
        val_rows = val_rows or []
        self.c, self.chosen_by = choose_c(texts, gold, [r["text"] for r in val_rows],
                                          [r["label"] for r in val_rows], self.labels, self.seed)
        self.model = _pipeline(self.c, self.seed).fit(texts, gold)
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
