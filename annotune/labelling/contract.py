"""The labelling contract: which labels a model scores, which labels it gives, and on which rows.

A `Labelling` is resolved once, from a task (a name in tasks/, a YAML file, a hub dataset id:
`from_source`), a dataset folder of preprocess.py (`from_source`) or adapters (their annotune.json:
`from_adapters`, `from_adapter`). It holds

- `scored`: the task spec whose labels the model is prompted with and scores;
- `reported`: the spec of the labels given and scored against gold: `scored` itself, or a named
  merge of it (train.py --merge_at prediction; evaluate.py --merge on adapters of the finer labels);
  a merged label's probability is the sum of its finer labels' (labels.merged_prediction);
- `prompt`: the template and label definitions (prompts.Prompter's settings; `prompter()`);
- `splits`: the rows of each split, with labels of `reported` (`fine_label`: the label before a
  merge), and `source`: where they were read from;
- `record`: the adapter's annotune.json as a typed `AdapterRecord`, and `rule`: the decision rule
  its labels go through (decision.py; settled by evaluate.py).

`Labelling.label` is the one call that labels rows: score, then merge, then the rule. train.py's
in-training validation, evaluate.py, export.py, corpus labelling and agreement all label through
it; a merge is defined in task.py, mapped in labels.py and applied here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..model.adapters import ADAPTER_INFO, PATH_KEYS, check_safetensors, read_json_object
from ..base.cli import UserError
from .decision import DecisionRule


RECORD_TYPES = {"base_model": str, "kind": str, "task_spec": dict, "labels": list, "prompt": dict, "base": dict,
                "task": str, "merge": str, "merge_after": str, "epoch": int, "step": int, "validation_metrics": dict,
                "decision_rule": dict, "train_ids": list, "split_ids": dict, "max_words": int, "quantization": str,
                "dataset": str, "run_dir": str, "git_commit": str, "tokenizer_files": dict}  # what each key of annotune.json must hold
OPTIONAL = set(RECORD_TYPES) - {"base_model", "kind", "task_spec", "labels"}  # these may also be null


@dataclasses.dataclass
class AdapterRecord:
    """annotune.json: what an adapter brings to be used. train.py writes it; everything else reads
    it through read_adapter_info, by attribute."""
    base_model: str  # as train.py was given it (alias, hub id or folder)
    kind: str  # causal, classifier, seq2seq
    task_spec: dict  # the task spec as trained (task.spec_from_saved)
    labels: list  # the labels the model scores
    prompt: dict = dataclasses.field(default_factory=dict)  # template and with_definitions (Prompter.describe)
    base: dict | None = None  # the base's identity (models.base_identity: name, hub id, weights)
    task: str | None = None
    merge: str | None = None  # the merge trained on (preprocess/train --merge)
    merge_after: str | None = None  # the merge its predictions go through (--merge_at prediction)
    epoch: int | None = None
    step: int | None = None
    validation_metrics: dict | None = None
    decision_rule: dict | None = None  # decision.DecisionRule.to_dict(), fit on validation
    train_ids: list | None = None
    split_ids: dict | None = None  # split -> ids: the rows can be rebuilt from the task's data
    max_words: int | None = None
    quantization: str | None = None  # 4bit, 8bit, none (as trained)
    dataset: str | None = None  # the dataset folder (resolved against the adapter folder on reading)
    run_dir: str | None = None
    git_commit: str | None = None
    tokenizer_files: dict | None = None  # file name -> SHA-256 of the tokenizer saved with the adapter

    @classmethod
    def from_dict(cls, data: dict, what: str) -> "AdapterRecord":
        """The record of a parsed annotune.json, or one line naming what is missing or of a wrong type
        (keys it does not know, from a newer version, are left out)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and name not in data]
        if missing:
            raise UserError(f"{what}: {ADAPTER_INFO} lacks {', '.join(missing)}; the folder is damaged")
        wrong = [k for k, t in RECORD_TYPES.items() if k in data and not (
            isinstance(data[k], t) and not isinstance(data[k], bool) or (data[k] is None and k in OPTIONAL))]
        if wrong:
            raise UserError(f"{what}: {ADAPTER_INFO} has {wrong[0]} of the wrong type "
                            f"({type(data[wrong[0]]).__name__}); the folder is damaged")
        return cls(**{k: v for k, v in data.items() if k in fields and not (k == "prompt" and v is None)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



def read_adapter_info(folder) -> AdapterRecord:
    """annotune.json as an AdapterRecord, its relative paths (dataset, run_dir) resolved against the
    adapter folder, after the folder is checked whole (annotune.json an object with its keys,
    adapter_config.json, the weights file complete): a damaged adapter is one line naming the file,
    before any use."""
    path = Path(folder) / ADAPTER_INFO
    if not path.exists():
        raise UserError(f"{folder} is not an adapter written by train.py (no {ADAPTER_INFO})")
    what = f"adapter {folder}"
    record = AdapterRecord.from_dict(read_json_object(path, what), what)
    read_json_object(Path(folder) / "adapter_config.json", what)
    check_safetensors(Path(folder) / "adapter_model.safetensors", what)
    for key in PATH_KEYS:
        if getattr(record, key):
            setattr(record, key, str((Path(folder) / getattr(record, key)).resolve()))
    return record


@dataclasses.dataclass
class Labelling:
    """What a model labels and how: see the module docstring."""
    scored: object  # task.TaskSpec: the labels the model scores
    reported: object  # task.TaskSpec: the labels given (scored, or a named merge of it)
    prompt: dict  # template and with_definitions (prompts.Prompter.describe)
    kind: str | None = None  # causal, classifier, seq2seq (None: the base model's, found when loaded)
    splits: dict = dataclasses.field(default_factory=dict)  # split -> rows (labels of `reported`)
    source: dict = dataclasses.field(default_factory=dict)  # where the rows come from (manifests, reports)
    record: AdapterRecord | None = None  # the adapter's annotune.json; None for a base model
    adapter: str | None = None  # the adapter folder
    rule: DecisionRule | None = None  # the decision rule labels go through (None: argmax)

    @property
    def merges(self) -> bool:
        """True when the labels given are a merge of the labels the model scores."""
        return bool(self.reported.merge) and self.reported.merge != self.scored.merge

    def prompter(self, tokenizer):
        """The Prompter of the scored labels (a head reads the text: its template is immaterial)."""
        from ..data.prompts import Prompter

        template = "auto" if self.kind == "classifier" else self.prompt.get("template", "auto")
        return Prompter(self.scored, template, self.prompt.get("with_definitions", True), tokenizer,
                        self.kind == "seq2seq", self.prompt.get("shots", ()))

    def label_of_scored(self) -> dict:
        """Each scored label's label given (itself without a merge)."""
        return dict(self.reported.merge_map) if self.merges else {l: l for l in self.scored.label_names}

    def label(self, annotator, rows, mode: str = "score", batch_size: int = 16, length_norm: bool = False,
              max_new_tokens: int | None = None, progress: bool = False, sampling: dict | None = None) -> list:
        """Predictions of `annotator` (an Annotator of `scored`) for rows: scored, merged into
        `reported`, then decided by `rule` where it is fitted (its label; `argmax_prediction` and
        the calibrated probabilities beside it). A merged prediction keeps its finer ones
        (`fine_prediction`, `fine_probs`)."""
        from ..data import labels

        rule = self.rule if self.rule is not None and self.rule.fitted else None
        offsets = rule.offsets if rule is not None else None
        if self.merges:
            # A row's own prompt (a dataset folder's) was rendered with the merged labels, and the
            # rule's offsets are the merged labels': the finer ones are prompted, near ties judged without.
            rows, offsets = [{"text": row["text"]} for row in rows], None
        preds = annotator.predict(rows, mode, batch_size, length_norm, max_new_tokens, progress, sampling=sampling,
                                  offsets=offsets)
        if self.merges:
            preds = [labels.merged_prediction(p, self.reported.label_names, self.reported.merge_map) for p in preds]
        if rule is not None and preds and "probs" in preds[0]:
            preds = rule.relabel(preds)
        return preds

    def training_rows(self, rows, prompter) -> list:
        """Rows as the model learns them: answered with the scored labels (the finer ones of a merge)."""
        if not self.merges:
            return list(rows)
        return [dict(row, label=row["fine_label"], **prompter.render(dict(row, label=row["fine_label"])))
                for row in rows]

    def for_model(self, adapter=None) -> "Labelling":
        """This labelling's rows under another model: an adapter of the same task (its own record,
        prompt and scored labels), or with adapter None the base model prompted as this one is."""
        if adapter is None:
            return dataclasses.replace(self, record=None, adapter=None, rule=None)
        own = from_adapter(adapter, self.reported.merge if self.merges else None)
        return dataclasses.replace(own, splits=self.splits, source=self.source)

    def adapter_record(self, **facts) -> AdapterRecord:
        """The record train.py saves with an adapter trained on this labelling; facts: the rest of
        AdapterRecord's fields (base model, epoch, metrics, ...)."""
        spec_dict, merge = self.scored.saved_form()
        return AdapterRecord(kind=self.kind, task=self.scored.name, merge=merge,
                             merge_after=self.reported.merge if self.merges else None,
                             labels=self.scored.label_names, prompt=self.prompt, task_spec=spec_dict, **facts)

    def usage(self) -> dict:
        """What a user of an exported model needs of the labels: task, merge, the labels given and
        scored, and which scored label is which label given."""
        return {"task": self.reported.name, "merge": self.reported.merge, "labels": self.reported.label_names,
                "scored_labels": self.scored.label_names, "label_of_scored": self.label_of_scored()}


# -------------------------------------------------------------------- the rule a labelling's labels go through
@dataclasses.dataclass(frozen=True)
class RuleSettings:
    """How a run settles its decision rule (evaluate.py builds it from --decision, --decision_objective,
    --seed, --mode, --batch_size, --length_norm): `decision` 'fitted' or 'argmax'; a rule fit now is
    fit to `objective` on the validation rows training fits on (decision.rule_rows), labelled in `mode`."""
    decision: str = "fitted"
    objective: str = "macro_f1"
    seed: int = 42
    mode: str = "score"
    batch_size: int = 16
    length_norm: bool = False


def settle_rule(settings: RuleSettings, labelling: Labelling, annotator, split: str, more_rows=list):
    """The rule `labelling`'s labels go through on `split`: the adapter's own (fit on every validation
    row in training), else one fit now on those rows; none with decision 'argmax', for generation, or
    on the validation split itself (a rule is never reported on the rows it was fit on). The adapter's
    rule is refit now, on the same rows (labelling.splits' validation, else more_rows()), when training
    left it to evaluation (it scored a sample of the validation rows) or when this run scores in
    another precision than it was fit in (bf16 here, fp32 there); refused when the rows are not here."""
    labels, record = labelling.reported.label_names, labelling.record
    if settings.decision == "argmax" or labelling.reported.type != "classification" or split == "validation" \
            or (settings.mode == "generate" and annotator.kind != "classifier"):
        return None
    if record and record.decision_rule:
        rule = DecisionRule.from_dict(record.decision_rule, labels)
        # Rules from before precision was recorded were fit on the training device's plain weights.
        fitted_in = rule.precision or ("fp32" if record.quantization in (None, "none") else annotator.precision)
        if not rule.fit_later and (not rule.fitted_on or fitted_in == annotator.precision):
            return rule
        rows = labelling.splits.get("validation") or more_rows()
        why = ("was left to evaluation (training scored a sample of the validation rows)" if rule.fit_later
               else f"was fit on {fitted_in} scores and this run scores in {annotator.precision}")
        if not rows:
            matching = {"bf16-autocast": "--cpu_bf16 on", "fp32": "--cpu_bf16 off"}.get(fitted_in)
            raise UserError(f"{annotator.name}'s decision rule {why}; its validation rows are not here to fit it: pass "
                            + (f"{matching} to score as it was fit, or " if matching and not rule.fit_later else "")
                            + "--decision argmax")
        rule = fit_rule_now(settings, labelling, annotator, rows)
        print(f"note: {annotator.name}'s decision rule {why}; fit on {rule.fitted_on} validation rows scored in "
              f"{annotator.precision}")
        return rule
    if not labelling.splits.get("validation"):
        return None
    return fit_rule_now(settings, labelling, annotator, labelling.splits["validation"])


def fit_rule_now(settings: RuleSettings, labelling: Labelling, annotator, validation_rows):
    """A decision rule fit on the validation rows training fits on (decision.rule_rows), labelled as
    this run labels them."""
    from .decision import fit_rule_on, rule_rows

    val = rule_rows(validation_rows)
    preds = dataclasses.replace(labelling, rule=None).label(annotator, val, settings.mode, settings.batch_size,
                                                            settings.length_norm)
    return fit_rule_on(preds, [r["label"] for r in val], labelling.reported.label_names, settings.objective,
                       annotator.precision)


# -------------------------------------------------------------------- resolving a labelling
def task_spec(name: str, merge: str | None = None):
    """A task by name (tasks/NAME.yaml), by a YAML file's path, or a hub dataset id (owner/name)
    with 'text' and 'label' columns; merged by `merge`."""
    from ..data.examples import hub_task
    from ..data.task import TASKS_DIR, load_task

    if "/" in name and not name.endswith((".yaml", ".yml")) and not (TASKS_DIR / f"{name}.yaml").exists():
        return hub_task(name).merged(merge)
    return load_task(name, merge)


def from_source(name: str, merge: str | None, prompt: dict, tokenizer, kind_of, seed: int = 42,
                **split_options) -> Labelling:
    """A labelling of a dataset folder (its rows, prompt and merge as built), or of a task spec
    (`task_spec`; its rows split by examples.prepare_splits with `seed` and `split_options`,
    rendered with `prompt`). kind_of(task type) -> kind (models.resolve_kind on the model's config)."""
    from ..data.examples import load_dataset_folder

    if Path(name).is_dir():
        splits, manifest, spec = load_dataset_folder(name)
        if merge and merge != manifest.get("merge"):
            raise UserError(f"{name} was built with merge {manifest.get('merge')}; rebuild it with --merge {merge}")
        info = {k: manifest.get(k) for k in ("task", "merge", "labels", "prompt", "splits", "task_spec", "max_words",
                                             "dropped_rows", "duplicate_texts_across_given_splits",
                                             "annotations", "corrections")}
        return Labelling(spec, spec, manifest["prompt"], kind_of(spec.type), splits,
                         dict(info, dataset_folder=str(Path(name).resolve())))
    return from_task(task_spec(name, merge), prompt, tokenizer, kind_of, seed, **split_options)


def from_task(spec, prompt: dict, tokenizer, kind_of, seed: int = 42, **split_options) -> Labelling:
    """A labelling of a task spec's rows: split by examples.prepare_splits (`seed`, `split_options`:
    its ratios, balancing, caps, max_words, resplit) and rendered with `prompt`."""
    from ..data.examples import prepare_splits
    from ..data.prompts import Prompter

    kind = kind_of(spec.type)
    prompter = Prompter(spec, prompt.get("template", "auto"), prompt.get("with_definitions", True), tokenizer,
                        kind == "seq2seq")
    splits, info = prepare_splits(spec, prompter, seed=seed, **split_options)
    return Labelling(spec, spec, prompter.describe(), kind, splits, info)


def from_adapter(folder, merge: str | None = None) -> Labelling:
    """An adapter's labelling without rows: its record, the labels it scores and gives (a merge
    after prediction: its own, or `merge` for an adapter of the finer labels)."""
    from ..data.task import spec_from_saved

    record = read_adapter_info(folder)
    if merge and record.merge:
        raise UserError(f"adapter {folder} was trained on merge {record.merge}: --merge applies to adapters of "
                        "the finer labels")
    if merge and record.merge_after not in (None, merge):
        raise UserError(f"adapter {folder} gives merge {record.merge_after}, not --merge {merge}")
    scored = spec_from_saved(record.task_spec, record.merge, str(Path(folder) / ADAPTER_INFO))
    after = record.merge_after or merge
    return Labelling(scored, scored.merged(after) if after else scored, record.prompt or {}, record.kind,
                     record=record, adapter=str(folder))


def from_adapters(adapters, merge: str | None = None, rows: bool = True) -> Labelling:
    """The labelling of the first adapter, with (rows=True) the rows they were trained and validated
    on (their dataset folder, else rebuilt from the task's data by the recorded ids), labelled as
    they give labels; the adapters must share the task and the labels given."""
    jobs = [from_adapter(a, merge) for a in adapters]
    given = {(j.record.task, tuple(j.record.labels), j.reported.merge) for j in jobs}
    if len(given) > 1:
        raise UserError(f"the adapters were trained on different tasks or label sets: {sorted(map(str, given))}")
    labelling = jobs[0]
    if rows:
        labelling.splits, labelling.source = adapter_rows(labelling)
    return labelling


def adapter_rows(labelling: Labelling) -> tuple:
    """({split: rows}, source) an adapter was trained on, with labels of the labels it gives."""
    from ..data.examples import load_dataset_folder, rows_by_ids, split_summary

    record, folder = labelling.record, labelling.record.dataset
    if not Path(folder).is_dir():
        if not record.split_ids:
            raise UserError(f"the dataset of adapter {labelling.adapter} is gone ({folder})")
        print(f"note: {folder} is gone; the rows are rebuilt from the task's data by the adapter's recorded ids")
        rows = rows_by_ids(labelling.reported, record.split_ids, record.max_words)
        return rows, {"dataset": f"task {labelling.reported.name}, recorded ids", "splits": split_summary(rows)}
    rows, manifest, spec = load_dataset_folder(folder)
    if labelling.merges and spec.merge != labelling.reported.merge:  # a folder of the finer labels, merged after prediction
        mapping = labelling.reported.merge_map
        rows = {split: [dict(r, fine_label=r["label"], label=mapping[r["label"]]) for r in split_rows]
                for split, split_rows in rows.items()}
    return rows, {"dataset": folder, "splits": manifest.get("splits")}


@dataclasses.dataclass(frozen=True)
class TrainingSource:
    """What train.py's labelling is built from and how many of its rows it uses (its data flags):
    a dataset folder, task or hub id (`dataset_name`) or a task, a named merge and where it is
    applied ('auto', 'prediction', 'training'), the prompt (template, definitions), the mode ('auto', 'causal',
    'classifier', 'seq2seq'), the seed, the training rows sampled (None = all), the validation rows
    (0 = all; None = the default: all for classification, 200 for generation), the longest example
    in tokens and what is done with a longer one (training_set.LONG_EXAMPLES)."""
    dataset_name: str | None = None
    task: str | None = None
    merge: str | None = None
    merge_at: str = "auto"
    template: str = "auto"
    with_definitions: bool = True
    mode: str = "auto"
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_seq_length: int = 1024
    long_examples: str = "cut"

    @classmethod
    def from_flags(cls, flags: dict) -> "TrainingSource":
        """From train.py's flags ({flag: value}): --without_definitions is with_definitions' opposite."""
        names = {f.name for f in dataclasses.fields(cls)} - {"with_definitions"}
        return cls(with_definitions=not flags["without_definitions"], **{k: flags[k] for k in names})


def for_training(settings: TrainingSource, tokenizer, config, default_task: str) -> Labelling:
    """train.py's labelling: the dataset folder, task or hub id with the merge, prompted as the
    settings say; merge_at 'auto' resolved (merge_at; resolved_flags says what was done)."""
    from ..data.task import TASKS_DIR
    from ..model.models import resolve_kind

    name = settings.dataset_name
    if name and not Path(name).is_dir() and "/" not in name and not name.endswith((".yaml", ".yml")) \
            and not (TASKS_DIR / f"{name}.yaml").exists():
        raise UserError(f"--dataset_name {name!r} is neither a dataset folder, a task ({TASKS_DIR}) nor a hub id")
    prompt = {"template": settings.template, "with_definitions": settings.with_definitions}
    labelling = from_source(name or settings.task or default_task, settings.merge, prompt, tokenizer,
                            lambda task_type: resolve_kind(config, settings.mode, task_type), seed=settings.seed)
    if not labelling.splits.get("train"):
        raise UserError("the train split is empty")
    return scoring_finer(labelling) if merge_at(settings.merge_at, labelling) == "prediction" else labelling


def resolved_flags(labelling: Labelling) -> dict:
    """The value train.py's manifest records for --merge_at auto: what for_training did."""
    return {"merge_at": "prediction" if labelling.merges else "training"}


def merge_at(asked: str, labelling: Labelling) -> str:
    """train.py --merge_at auto: instruction tuning learns a merge's finer labels where the rows
    keep them. Measured on both merged tasks of bench/quality.py (docs/results.md): drug_reviews'
    neutral vs the rest, test macro-F1 0.526 -> 0.601 and balanced accuracy 0.523 -> 0.616;
    Politosphere's pol/unpol/oth 0.393 -> 0.426 (balanced accuracy 0.474 -> 0.463, on 34 rows). A
    MiniLM head gained nothing it could rank (drug_neutral 0.475 -> 0.522 with ranking AUC 0.49;
    Politosphere one label either way), so a head trains on the merged labels."""
    if asked != "auto":
        return asked
    if not labelling.scored.merge_map or labelling.kind == "classifier":
        return "training"  # nothing is merged (the same either way), or a head (no gain measured)
    if any("fine_label" not in r for rows in labelling.splits.values() for r in rows):
        print(f"note: {labelling.source.get('dataset_folder')} keeps no labels from before the merge (an older "
              "preprocess.py): training on the merged labels; build it again to learn the finer ones")
        return "training"
    return "prediction"


def scoring_finer(labelling: Labelling) -> Labelling:
    """train.py --merge_at prediction: the model learns and scores the task's labels before the
    merge (prompt, answers, balance), on the same rows; validation, the decision rule and the epoch
    kept use the merge."""
    if not labelling.scored.merge_map:
        raise UserError("--merge_at prediction needs a merge of the task's labels: give --merge NAME")
    unknown = [r["id"] for rows in labelling.splits.values() for r in rows if "fine_label" not in r]
    if unknown:
        raise UserError(f"{labelling.source.get('dataset_folder')}: row {unknown[0]} has no label from before the merge "
                        "(a folder of an older preprocess.py): build it again for --merge_at prediction")
    return dataclasses.replace(labelling, scored=labelling.scored.unmerged)


def of_spec(spec, prompt: dict | None = None, kind: str | None = None, rule=None) -> Labelling:
    """A labelling of a task spec without rows (a base model's zero-shot labels, a benchmark's):
    the model scores and gives the spec's labels, prompted by `prompt` (default: auto, definitions),
    decided by `rule` (default: argmax)."""
    return Labelling(spec, spec, prompt or {}, kind, rule=rule)
