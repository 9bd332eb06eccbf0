"""What train.py trains on: the labelling of its data (contract.py: a preprocess.py folder, a task
spec or a hub dataset), the sampled training and validation rows, the tokenised examples (loss on
the completion only), --epoch's default, and what is printed of them at the start."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..base.cli import UserError
from ..data.prompts import cut_text_to_fit, encode_example, encode_prompt

DEFAULT_EPOCHS, MIN_STEPS, MAX_DEFAULT_EPOCHS = 3, 150, 50  # train.py's --epoch default (see default_epochs)


LONG_EXAMPLES = ("cut", "drop")  # train.py --long_examples


def build_features(kind, tokenizer, rows, label_names, max_seq_length, max_target_length=256, prompter=None,
                   long_examples: str = "cut"):
    """Tokenised training examples and counts of what was cut, dropped or truncated. A causal or
    seq2seq example longer than max_seq_length has its text cut from the end to fit, the answer kept
    whole (long_examples 'cut', with the prompter that rendered the rows), as labelling cuts a long
    text; with 'drop' it is left out. One that cannot fit (an answer too long, a prompt too long
    without its text) is dropped either way."""
    feats, counts = [], {"dropped_too_long": 0, "cut_to_fit": 0, "truncated": 0}
    index = {name: i for i, name in enumerate(label_names or [])}
    cut_long = long_examples == "cut" and prompter is not None
    for row in rows:
        if kind == "classifier":
            ids = tokenizer(row["text"], truncation=False)["input_ids"]
            if len(ids) > max_seq_length:
                counts["truncated"] += 1  # a head reads the text, not an answer: truncating loses no label
                ids = ids[: max_seq_length - 1] + ids[-1:]
            feats.append({"input_ids": ids, "label": index[row["label"]], "id": row["id"]})
            continue
        fitted = _fitted_example(kind, tokenizer, row, max_seq_length, max_target_length, prompter if cut_long else None)
        if fitted is None:
            counts["dropped_too_long"] += 1
            continue
        ids, labels, cut = fitted
        counts["cut_to_fit"] += cut
        feats.append({"input_ids": ids, "labels": labels, "id": row["id"]})
        if row.get("label") in index:  # which label the answer is (for --balance)
            feats[-1]["label"] = index[row["label"]]
    return feats, counts


def _encoded(kind, tokenizer, prompt: str, completion: str) -> tuple:
    """(input_ids, labels) of a causal example (loss on the completion) or a seq2seq one (source, target)."""
    if kind == "causal":
        enc = encode_example(tokenizer, prompt, completion)
        return enc["input_ids"], enc["labels"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return encode_prompt(tokenizer, prompt), tokenizer(completion, add_special_tokens=False)["input_ids"] + eos


def _fitted_example(kind, tokenizer, row, max_seq_length, max_target_length, prompter) -> tuple | None:
    """(input_ids, labels, cut) of one causal or seq2seq example within the limits, its text cut from
    the end where a prompter is given and re-renders the row's own prompt; None where it cannot fit.
    Never the answer: cutting it would teach a wrong label."""
    ids, labels = _encoded(kind, tokenizer, row["prompt"], row["completion"])
    if kind == "seq2seq" and len(labels) > max_target_length:
        return None
    if len(ids) <= max_seq_length:
        return ids, labels, False
    if prompter is None or "text" not in row or prompter.prompt(row["text"]) != row["prompt"]:
        return None

    def length(text):
        return len(_encoded(kind, tokenizer, prompter.prompt(text), row["completion"])[0])

    text, _ = cut_text_to_fit(tokenizer, row["text"], length, max_seq_length)
    ids, labels = _encoded(kind, tokenizer, prompter.prompt(text), row["completion"])
    return (ids, labels, True) if len(ids) <= max_seq_length else None


def describe_start(data, model, tokenizer, model_name: str, max_seq_length: int) -> None:
    """Print one rendered example with the loss span marked, trainable parameters, dropped examples
    (data: train.py's TrainingData)."""
    from ..data.examples import data_report
    from ..data.prompts import mark_loss_span

    labelling, prompter, stats, example = data.labelling, data.prompter, data.stats, data.train_rows[0]
    spec, kind = labelling.reported, labelling.kind

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"task {spec.name} ({kind}), model {model_name}, template {prompter.template}, "
          f"{len(data.feats)} training examples, {len(data.eval_rows)} validation examples")
    if labelling.merges:
        print(f"learning the {len(labelling.scored.labels)} labels before the merge ({', '.join(labelling.scored.label_names)}); "
              f"validation and the labels given are the merge's ({', '.join(spec.label_names)})")
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    for line in data_report(labelling.source):
        print(f"note: {line}")
    if stats.get("cut_to_fit"):
        print(f"cut {stats['cut_to_fit']} texts from their end to fit --max_seq_length {max_seq_length} "
              "(the answers kept whole; --long_examples)")
    if stats["dropped_too_long"]:
        print(f"dropped {stats['dropped_too_long']} examples that do not fit --max_seq_length {max_seq_length}")
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


GENERATION_EVAL_ROWS = 200  # validation rows a generation task generates for per epoch by default


@dataclass
class TrainingData:
    """What train.py trains and validates on: the labelling (contract.Labelling: the labels scored
    and given, the prompt, the splits and where they were read from) and the rows drawn from it."""
    labelling: object  # contract.Labelling
    prompter: object  # prompts.Prompter of the scored labels
    train_rows: list = field(default_factory=list)  # answered with the scored labels
    eval_rows: list = field(default_factory=list)  # labels given (validation scores them)
    rule_fit: bool = False  # eval_rows are the rows the decision rule is fit on (decision.rule_rows)
    feats: list = field(default_factory=list)  # tokenised training examples
    stats: dict = field(default_factory=dict)  # cut / dropped / truncated counts, lengths


def load_training_data(settings, tokenizer, config, default_task: str) -> TrainingData:
    """The labelling of train.py's data (contract.for_training of a contract.TrainingSource), the
    sampled training and validation rows, and the tokenised training examples."""
    from ..data.examples import sample_rows
    from ..labelling.contract import for_training
    from ..labelling.decision import rule_rows

    labelling = for_training(settings, tokenizer, config, default_task)
    data = TrainingData(labelling, labelling.prompter(tokenizer))
    data.train_rows = labelling.training_rows(sample_rows(labelling.splits["train"], settings.max_train_samples,
                                                          settings.seed), data.prompter)
    validation, n = labelling.splits.get("validation") or [], settings.max_eval_samples
    data.eval_rows = sample_rows(validation, GENERATION_EVAL_ROWS if n is None else n, settings.seed)
    if labelling.scored.type == "classification":
        # The decision rule is fit on every validation row (up to decision.RULE_MAX_ROWS), in training as in
        # evaluate.py; a smaller --max_eval_samples leaves the fit to evaluate.py.
        every = rule_rows(validation)
        if not n or n >= len(every):
            data.eval_rows, data.rule_fit = every, True
        for row, labels in [(r, labelling.scored.label_names) for r in data.train_rows] + \
                [(r, labelling.reported.label_names) for r in data.eval_rows]:
            if row["label"] not in labels:
                raise UserError(f"gold label {row['label']!r} of {row['id']} is not in the label set {labels}")
    data.feats, data.stats = build_features(labelling.kind, tokenizer, data.train_rows, labelling.scored.label_names,
                                            settings.max_seq_length, prompter=data.prompter,
                                            long_examples=settings.long_examples)
    if not data.feats:
        raise UserError(f"no training example fits --max_seq_length {settings.max_seq_length}")
    lengths = [len(f["input_ids"]) for f in data.feats]
    data.stats.update(longest=max(lengths), mean_length=sum(lengths) / len(lengths))
    return data
