"""Labelling and evaluation: the labelling contract (contract.py), the decision rule (decision.py),
a model ready to label (annotator.py), label metrics (metrics.py), baselines (baseline.py),
agreement with humans (agreement.py), result files (report.py), labelling a corpus in parts
(corpus.py), few-shot examples (shots.py), K-fold runs and their ensemble (ensemble.py),
learning curves (curves.py). Imports the base, the data side and the model."""
