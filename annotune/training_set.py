"""What train.py trains on: the task's rows from a preprocess.py folder, a task spec or a hub dataset,
the sampled training and validation rows, a merge learned through its finer labels (--merge_at),
the tokenised examples (loss on the completion only), --epoch's default, and what is printed of them
at the start."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .cli import UserError
from .prompts import encode_example, encode_prompt

DEFAULT_EPOCHS, MIN_STEPS, MAX_DEFAULT_EPOCHS = 3, 150, 50  # train.py's --epoch default (see default_epochs)


def build_features(kind, tokenizer, rows, label_names, max_seq_length, max_target_length=256):
    """Tokenised training examples and counts of what was dropped or truncated."""
    feats, dropped, truncated = [], 0, 0
    index = {name: i for i, name in enumerate(label_names or [])}
    eos = tokenizer.eos_token_id
    for row in rows:
        if kind == "causal":
            enc = encode_example(tokenizer, row["prompt"], row["completion"])
            if len(enc["input_ids"]) > max_seq_length:
                dropped += 1  # never truncate: that would cut the answer away
                continue
            feats.append({"input_ids": enc["input_ids"], "labels": enc["labels"], "id": row["id"]})
            if row.get("label") in index:  # which label the answer is (for --balance)
                feats[-1]["label"] = index[row["label"]]
        elif kind == "classifier":
            ids = tokenizer(row["text"], truncation=False)["input_ids"]
            if len(ids) > max_seq_length:
                truncated += 1  # a head reads the text, not an answer: truncating loses no label
                ids = ids[: max_seq_length - 1] + ids[-1:]
            feats.append({"input_ids": ids, "label": index[row["label"]], "id": row["id"]})
        else:  # seq2seq
            src = encode_prompt(tokenizer, row["prompt"])
            tgt = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            if len(src) > max_seq_length or len(tgt) > max_target_length:
                dropped += 1
                continue
            feats.append({"input_ids": src, "labels": tgt, "id": row["id"]})
            if row.get("label") in index:
                feats[-1]["label"] = index[row["label"]]
    return feats, {"dropped_too_long": dropped, "truncated": truncated}



def describe_start(data, model, tokenizer, model_name: str, max_seq_length: int) -> None:
    """Print one rendered example with the loss span marked, trainable parameters, dropped examples
    (data: train.py's TrainingData)."""
    from .examples import data_report
    from .prompts import mark_loss_span

    spec, kind, prompter, stats, example = data.reported, data.kind, data.prompter, data.stats, data.train_rows[0]

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"task {spec.name} ({kind}), model {model_name}, template {prompter.template}, "
          f"{len(data.feats)} training examples, {len(data.eval_rows)} validation examples")
    if data.merge_after:
        print(f"learning the {len(data.spec.labels)} labels before the merge ({', '.join(data.spec.label_names)}); "
              f"validation and the labels given are the merge's ({', '.join(spec.label_names)})")
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    for line in data_report(data.data_info):
        print(f"note: {line}")
    if stats["dropped_too_long"]:
        print(f"dropped {stats['dropped_too_long']} examples longer than --max_seq_length {max_seq_length}")
    if stats["truncated"]:
        print(f"truncated {stats['truncated']} texts to --max_seq_length {max_seq_length} (classifier input)")
    if max_seq_length > 2 * stats["longest"] and max_seq_length > 256:
        print(f"note: --max_seq_length {max_seq_length} but the longest example has {stats['longest']} tokens "
              "(nothing is padded to it; it only caps)")
    if kind == "causal":
        encoded = encode_example(tokenizer, example["prompt"], example["completion"])
        print("example (loss on >>> <<<):\n" + mark_loss_span(tokenizer, encoded))
    elif kind == "seq2seq":
        print(f"example input:\n{example['prompt']}\ntarget (loss): {example['completion']}")
    else:
        print(f"example text: {example['text'][:300]}\nlabel: {example['label']}")


# -------------------------------------------------------------------- what train.py trains on
def epoch_size(n: int, oversample_labels=None) -> int:
    """Examples per epoch: n, or with oversampling every label repeated up to the largest one's count."""
    if not oversample_labels:
        return n
    counts = {}
    for label in oversample_labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) * len(counts)


def default_epochs(feats, balance: str, examples_per_step: int) -> int:
    """--epoch's default: DEFAULT_EPOCHS, raised on small data so that training takes at least
    MIN_STEPS optimizer steps (at most MAX_DEFAULT_EPOCHS epochs). The defaults were chosen where 3
    epochs are 90-270 steps (bench/choose_defaults.sh, bench/quality.py); on Politosphere's 56
    training rows they were 36 steps and the model learned nothing (test ranking AUC 0.52); 13
    epochs (156 steps) gave AUC 0.61 and balanced accuracy 0.47 (docs/results.md)."""
    labels = [f["label"] for f in feats] if balance == "oversample" else None
    steps = max(1, math.ceil(epoch_size(len(feats), labels) / examples_per_step))
    return min(MAX_DEFAULT_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps)))


@dataclass
class TrainingData:
    """What train.py trains and validates on, with how it was read (data_info goes to the manifest)."""
    spec: object  # task.TaskSpec
    kind: str  # causal, classifier or seq2seq
    prompter: object  # prompts.Prompter
    splits: dict  # split name -> rendered rows (as written to the dataset folder)
    data_info: dict
    train_rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)
    feats: list = field(default_factory=list)  # tokenised training examples
    stats: dict = field(default_factory=dict)  # dropped / truncated counts, lengths
    merge_after: object = None  # --merge_at prediction: the merged spec reported (spec is then the finer one)

    @property
    def reported(self):
        """The spec of the labels validation scores and the adapter gives."""
        return self.merge_after or self.spec


def load_training_data(args, tokenizer, config, default_task: str) -> TrainingData:
    """The task (from a preprocess.py folder, a task spec or a hub dataset), its splits, the
    sampled training and validation rows, and the tokenised training examples (args: train.py's)."""
    from .examples import sample_rows

    data = read_task_data(args, tokenizer, config, default_task)
    if not data.splits.get("train"):
        raise UserError("the train split is empty")
    args.merge_at = merge_at(getattr(args, "merge_at", "training"), data)  # resolved: the manifest records it
    if args.merge_at == "prediction":
        learn_finer_labels(data, tokenizer)
    data.train_rows = sample_rows(data.splits["train"], args.max_train_samples, args.seed)
    data.eval_rows = sample_rows(data.splits.get("validation") or [], args.max_eval_samples, args.seed)
    if data.merge_after:  # the same rows, answered with their finer labels
        data.train_rows = [dict(row, label=row["fine_label"], **data.prompter.render(dict(row, label=row["fine_label"])))
                           for row in data.train_rows]
    if data.spec.type == "classification":
        for row, labels in [(r, data.spec.label_names) for r in data.train_rows] + \
                [(r, data.reported.label_names) for r in data.eval_rows]:
            if row["label"] not in labels:
                raise UserError(f"gold label {row['label']!r} of {row['id']} is not in the label set {labels}")
    data.feats, data.stats = build_features(data.kind, tokenizer, data.train_rows, data.spec.label_names,
                                            args.max_seq_length)
    if not data.feats:
        raise UserError(f"no training example fits --max_seq_length {args.max_seq_length}")
    lengths = [len(f["input_ids"]) for f in data.feats]
    data.stats.update(longest=max(lengths), mean_length=sum(lengths) / len(lengths))
    return data


def merge_at(asked: str, data: TrainingData) -> str:
    """--merge_at auto: instruction tuning learns a merge's finer labels where the rows keep them.
    Measured on both merged tasks of bench/quality.py (docs/results.md): drug_reviews' neutral vs
    the rest, test macro-F1 0.526 -> 0.601 and balanced accuracy 0.523 -> 0.616; Politosphere's
    pol/unpol/oth 0.393 -> 0.426 (balanced accuracy 0.474 -> 0.463, on 34 rows). A MiniLM head
    gained nothing it could rank (drug_neutral 0.475 -> 0.522 with ranking AUC 0.49; Politosphere
    one label either way), so a head trains on the merged labels."""
    if asked != "auto":
        return asked
    if not data.spec.merge_map or data.kind == "classifier":
        return "training"  # nothing is merged (the same either way), or a head (no gain measured)
    if any("fine_label" not in r for rows in data.splits.values() for r in rows):
        print(f"note: {data.data_info.get('dataset_folder')} keeps no labels from before the merge (an older "
              "preprocess.py): training on the merged labels; build it again to learn the finer ones")
        return "training"
    return "prediction"


def learn_finer_labels(data: TrainingData, tokenizer) -> None:
    """--merge_at prediction: the model learns the task's labels before the merge (prompt, answers,
    balance), on the same rows; validation, the decision rule and the epoch kept use the merge."""
    from .prompts import Prompter

    if not data.spec.merge_map:
        raise UserError("--merge_at prediction needs a merge of the task's labels: give --merge NAME")
    unknown = [r["id"] for rows in data.splits.values() for r in rows if "fine_label" not in r]
    if unknown:
        raise UserError(f"{data.data_info.get('dataset_folder')}: row {unknown[0]} has no label from before the merge "
                        "(a folder of an older preprocess.py): build it again for --merge_at prediction")
    data.merge_after, data.spec = data.spec, data.spec.unmerged
    data.prompter = Prompter(data.spec, data.prompter.template, data.prompter.with_definitions, tokenizer,
                             data.kind == "seq2seq")


def read_task_data(args, tokenizer, config, default_task: str) -> TrainingData:
    from .examples import hub_task, load_dataset_folder, prepare_splits
    from .models import resolve_kind
    from .prompts import Prompter
    from .task import TASKS_DIR, load_task

    name = args.dataset_name
    if name and Path(name).is_dir():
        splits, manifest, spec = load_dataset_folder(name)
        if args.merge and args.merge != manifest.get("merge"):
            raise UserError(f"{name} was built with merge {manifest.get('merge')}; rebuild it with --merge {args.merge}")
        kind = resolve_kind(config, args.mode, spec.type)
        prompt = manifest["prompt"]
        # A head reads the text, not the prompt: a folder rendered with a chat template still trains one.
        template = "auto" if kind == "classifier" else prompt["template"]
        prompter = Prompter(spec, template, prompt["with_definitions"], tokenizer, kind == "seq2seq")
        info = {k: manifest.get(k) for k in ("task", "merge", "labels", "prompt", "splits", "task_spec", "max_words",
                                             "dropped_rows", "duplicate_texts_across_given_splits")}
        return TrainingData(spec, kind, prompter, splits, dict(info, dataset_folder=str(Path(name).resolve())))
    if name and not (TASKS_DIR / f"{name}.yaml").exists() and not name.endswith((".yaml", ".yml")):
        if "/" not in name:
            raise UserError(f"--dataset_name {name!r} is neither a dataset folder, a task ({TASKS_DIR}) nor a hub id")
        spec = hub_task(name)
    else:
        spec = load_task(args.task or name or default_task, args.merge)
    kind = resolve_kind(config, args.mode, spec.type)
    prompter = Prompter(spec, args.template, not args.without_definitions, tokenizer, kind == "seq2seq")
    splits, info = prepare_splits(spec, prompter, seed=args.seed)
    return TrainingData(spec, kind, prompter, splits, info)
