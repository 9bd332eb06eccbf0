"""Labelling a corpus file (evaluate.py --predict_file): one model, or a k-fold run's fold models in
turn (--ensemble), resumably in chunks dealt across accelerate processes (corpus.PartStore), the
output written once whole. What a run is asked for is one value, `AnnotationJob`; a resumed run
must match its fingerprint exactly (`annotation_fingerprint`)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..base.cli import UserError

CHECK_ALPHA = 0.01  # the shift test's level, Bonferroni over the folds and labels


@dataclass(frozen=True)
class AnnotationJob:
    predict_file: str
    text_column: str
    output: Path
    overwrite: bool = False
    chunk_rows: int = 1000
    stop_after_chunks: int = 0  # tests: simulate a crash
    batch_size: int = 16
    mode: str = "score"
    length_norm: bool = False
    max_new_tokens: int | None = None
    sampling: dict | None = None  # generation: {} greedy, else do_sample and temperature
    seed: int = 42
    quiet: bool = False
    quantization: str = "auto"
    cpu_bf16: str = "auto"
    tie_margin: float = 0.05


def annotate(job: AnnotationJob, labelling, adapters: list, base, settle: Callable, validation_rows: Callable) -> int:
    """Label the file with one model (an adapter's labelling, or the base annotator); settle(labelling,
    annotator) gives the rule to label by (contract.settle_rule for "predict"); validation_rows() the
    adapter's validation rows (for the shift note)."""
    from accelerate import PartialState

    from ..base.files import ensure_new_path
    from ..model.models import device_name
    from .annotator import load_annotator
    from .corpus import PartStore, check_input, output_format

    if len(adapters) + (1 if base else 0) != 1:
        raise UserError("--predict_file labels with one model: one adapter, or --base_only")
    parts = job.output.with_name(f"{job.output.name}.parts")
    inputs = (job.predict_file, *map(str, adapters))
    ensure_new_path(job.output, job.overwrite, what="--output", inputs=inputs, kind="file")
    ensure_new_path(parts, True, what="--output's parts folder", inputs=inputs if job.overwrite else (), kind="dir")
    fmt = output_format(job.output)
    input_sha256, input_columns = check_input(job.predict_file, job.text_column)
    annotator = base or load_annotator(labelling, quantization=job.quantization, cpu_bf16=job.cpu_bf16,
                                       tie_margin=job.tie_margin)
    state = PartialState(cpu=device_name() == "cpu")
    # The adapter's own rule (refit if its precision differs); argmax for a base model
    labelling = replace(labelling, rule=settle(replace(labelling, splits={}), annotator))
    store = PartStore(job.output, annotation_fingerprint(job, adapters, labelling, annotator, input_sha256), fmt)
    if state.is_main_process:
        store.lock()  # one labeller per output; the processes of this launch share it
    try:
        code = label_parts(job, state, store, labelling, annotator, job.output, input_columns)
    finally:
        store.unlock()
    if job.output.exists() and state.is_main_process:
        shift_note(job, labelling, annotator, validation_rows(), job.output)
    return code


def shift_note(job: AnnotationJob, labelling, annotator, validation: list, output: Path) -> None:
    """Validation quality holds for a corpus drawn as the validation rows were: the model's scores on
    up to 400 of the adapter's validation rows against its scores on the corpus (shift_test below,
    alpha 0.01); a clear difference gets one note."""
    from ..base.tables import read_frame
    from ..data.examples import sample_rows

    labels = labelling.reported.label_names
    rows = sample_rows(validation, 400, job.seed) if labels else []
    if len(rows) < 20:
        return
    preds = labelling.label(annotator, rows, job.mode, job.batch_size, job.length_norm)
    if "probs" not in preds[0]:
        return  # generated labels: no scores to compare
    held = np.array([[(p.get("calibrated_probs") or p["probs"])[label] for label in labels] for p in preds])
    corpus = read_frame(output, "--output")[[f"prob_{label}" for label in labels]].to_numpy(dtype=float)
    test = shift_test(held, np.zeros(len(held), dtype=int), corpus[None])
    if test["reject"]:
        print(f"note: the model scores this corpus unlike its {len(rows)} validation rows (Kolmogorov-Smirnov, "
              f"p = {test['p_value']:.2g}): its validation quality may not hold here; a human sample of the corpus "
              "(sample.py, estimate.py) is the way to know")


def label_parts(job: AnnotationJob, state, store, labelling, annotator, output: Path, input_columns) -> int:
    """This process's chunks of the file into the part store; the main process joins them."""
    from ..base.files import remove_dir
    from .corpus import annotate_file

    if state.is_main_process and job.overwrite:
        remove_dir(store.folder)
    state.wait_for_everyone()
    store.open()  # every process reads the finished ranges
    if job.sampling:  # seeded just before labelling, so a sampled annotation can be repeated
        import torch

        torch.manual_seed(job.seed)
    result = annotate_file(labelling, annotator, job.predict_file, job.text_column, store, job.batch_size, job.mode,
                           job.chunk_rows, state.process_index, state.num_processes, job.stop_after_chunks,
                           progress=not job.quiet, input_columns=input_columns, length_norm=job.length_norm,
                           max_new_tokens=job.max_new_tokens, sampling=job.sampling)
    if result["interrupted"]:
        print(f"stopped after {result['labelled']} rows; run the same command again to resume")
        return 0
    state.wait_for_everyone()
    if state.is_main_process:
        count = store.join(output, result["columns"], result["total"])
        print(f"labelled {count} rows -> {output}")
    return 0


def annotate_ensemble(job: AnnotationJob, run_folder: str, bases, labelling_for: Callable, decision: str,
                      objective: str) -> int:
    """Each fold model of a k-fold run labels the file in turn (argmax, resumably) into
    <output>.folds/, then the K files are joined (ensemble.py) by the run's out-of-fold rule (decision
    "fitted") or argmax, and checked for a shift between the corpus and the run's labelled rows.
    labelling_for(adapter): an adapter's labelling without its rows."""
    from accelerate import PartialState
    from peft import PeftModel

    from ..base.files import ensure_new_path, remove_dir
    from ..model.models import device_name
    from . import ensemble
    from .annotator import load_annotator, unfold_lora
    from .corpus import PartStore, check_input, output_format

    run = ensemble.read_run(run_folder)
    work = job.output.with_name(f"{job.output.name}.folds")
    ensure_new_path(job.output, job.overwrite, what="--output", inputs=(job.predict_file, run_folder), kind="file")
    output_format(job.output)
    input_sha256, input_columns = check_input(job.predict_file, job.text_column)
    if job.overwrite:
        remove_dir(work)
    state, precision = PartialState(cpu=device_name() == "cpu"), None
    for k, adapter in enumerate(run.adapters):
        fold_out = work / f"fold_{k}.csv"
        if fold_out.exists():
            continue
        labelling = replace(labelling_for(adapter), rule=None)
        record = labelling.record
        annotator = load_annotator(labelling, model=PeftModel.from_pretrained(
            bases.get(record.base_model, record.kind, record.labels), str(adapter)), cpu_bf16=job.cpu_bf16,
            tie_margin=job.tie_margin)
        work.mkdir(parents=True, exist_ok=True)
        store = PartStore(fold_out, dict(annotation_fingerprint(job, [adapter], labelling, annotator, input_sha256),
                                         kfold_run=run.fingerprint, fold=k), "csv")
        if state.is_main_process:
            store.lock()
        try:
            label_parts(job, state, store, labelling, annotator, fold_out, input_columns)
        finally:
            store.unlock()
        state.wait_for_everyone()  # the main process has joined this fold's parts
        unfold_lora(annotator.model)
        annotator.model.unload()
        if not fold_out.exists():
            return 0  # stopped: the same command resumes
        precision = annotator.precision
    if not state.is_main_process:
        return 0
    rule = ensemble.ensemble_rule(run, objective, precision) if decision == "fitted" else None
    joined = ensemble.join([work / f"fold_{k}.csv" for k in range(run.k)], run.labels, rule, job.output, input_columns)
    remove_dir(work)
    shift = shift_test(run.oof_probs(), run.oof["fold"].astype(int).to_numpy(), joined["per_fold"])  # raw, as oof
    print(f"labelled {joined['rows']} rows with the {run.k} fold models of {run.folder} -> {job.output}; decision rule: "
          f"{rule.note if rule is not None else 'argmax (--decision argmax)'}")
    if shift["reject"]:
        print(f"note: the corpus differs from the run's labelled rows ({shift['test']}: p = {shift['p_value']:.2g}); "
              "the out-of-fold quality may not hold on it; a human sample of the corpus (sample.py, estimate.py) "
              "is the way to know")
    return 0


def annotation_fingerprint(job: AnnotationJob, adapters, labelling, annotator, input_sha256: str) -> dict:
    """Everything that changes a label: a resumed annotation must match it exactly."""
    from ..model.models import tokenizer_sha256, weights_sha256

    rule, tokenizer = labelling.rule, annotator.tokenizer
    labels = labelling.scored.label_names if labelling.scored.type == "classification" else []
    return {"model": f"adapter sha256 {weights_sha256(Path(adapters[0]))}" if adapters else f"base {annotator.name}",
            "decision_rule": rule.to_dict() if rule is not None and rule.fitted else "argmax", "mode": job.mode,
            "length_norm": job.length_norm, "max_new_tokens": job.max_new_tokens, "sampling": job.sampling,
            "seed": job.seed if job.sampling else None, "input_sha256": input_sha256,
            "text_column": job.text_column, "labels": labelling.reported.label_names, "precision": annotator.precision,
            "bf16_tie_margin": annotator.tie_margin, "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "label_token_ids": [tokenizer(annotator.prompter.completion(label), add_special_tokens=False)["input_ids"]
                                for label in labels] if annotator.prompter is not None else None}


def shift_test(heldout: np.ndarray, fold: np.ndarray, others: np.ndarray, alpha: float = CHECK_ALPHA) -> dict:
    """Fold k's model's scores on its held-out rows (heldout[fold == k], (n_k, L)) against its
    scores on other rows (others[k], (M, L)): a two-sample Kolmogorov-Smirnov test per label's
    probability (one for two labels), Bonferroni over folds and labels; reject below alpha."""
    from scipy.stats import ks_2samp

    n_labels = heldout.shape[1]
    columns = [0] if n_labels == 2 else list(range(n_labels))
    tests = [(k, j, float(ks_2samp(heldout[fold == k][:, j], others[k][:, j]).pvalue))
             for k in range(len(others)) for j in columns if (fold == k).any() and len(others[k])]
    if not tests:
        return {"test": "none", "p_value": 1.0, "alpha": alpha, "reject": False, "tests": 0}
    k, j, p = min(tests, key=lambda t: t[2])
    adjusted = min(1.0, p * len(tests))
    return {"test": f"Kolmogorov-Smirnov, fold {k} model's scores of label {j} on its held-out rows vs the "
                    f"corpus rows; Bonferroni over {len(tests)} tests",
            "p_value": adjusted, "alpha": alpha, "reject": bool(adjusted < alpha), "tests": len(tests)}
