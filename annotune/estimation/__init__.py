"""Inference from labels: the annotated corpus read back (annotated.py), sampling designs
(designs.py), the estimators' math (inference.py) and registry (estimators.py), and what a study
reports (findings.py), cross-prediction (crossfit.py). Imports the base, the data side and labelling/'s corpus columns."""
