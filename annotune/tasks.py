"""Task specs: one YAML file per annotation task, the single source of truth for labels,
definitions, prompt text, data sources, target derivation, label merges and metrics.

A spec (see tasks/*.yaml for real ones):

    name: politosphere
    type: classification            # or: generation
    description: one line
    data:
      splits:                        # source splits; a single one is split by preprocess.py
                                     # (per file: path, format, columns, encoding, rename)
        all: {path: "{data_dir}/politosphere/daccord_yifei_v2_leo.json", format: jsonl}
      hub: {path: some/dataset, name: null, splits: {train: train}}   # used when files are missing
      id_column: id                  # default: the row number within its source split
      text: "{body_cleaned}"         # a template over the columns
      text_cleanup: [html_unescape]  # optional: html_unescape, strip_quotes, squash_whitespace
      label_column: User label       # classification: raw label values
      label_map: {0: biased}         # optional raw value -> label name (else: names, case-insensitive)
      bins: [{below: 0.25, label: no}, ...]   # optional: numeric raw values binned, stated in the spec
      skip_values: [""]              # raw values dropped with a count (e.g. unannotated rows)
      target_column: summary         # generation: the reference text (a list is joined)
      list_join: ", "                # generation: how list-valued targets are joined
      empty_target: none             # generation: the target for an empty list / empty text
      reference_columns: [summary1, summary2]   # generation: extra references for metrics
    labels:                          # classification only; order is the label numbering
      - {name: Support Gun Polarized, definition: ...}
    prompt:
      system: You are ...
      instruction: "Classify the sentence into one of: {label_list}."
      input: "Sentence: {text}"
    merges:
      pol_unpol_oth:
        labels:
          - {name: polarized, definition: ..., from: [Support Gun Polarized, Anti Gun Polarized]}
        prompt: {system: ...}        # optional overrides for the merged task
    metrics: [accuracy, macro_f1]
    balance_per_label: null          # default per-label count for preprocess.py

Path placeholders: {data_dir} is $ANNOTUNE_DATA_DIR, or ../shared/data beside the repository;
{package:NAME} is the folder of an installed package, found without importing it. A file path may
name a member of a zip archive as archive.zip!member.
"""
from __future__ import annotations

import copy
import html
import importlib.util
import json
import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from .io import REPO_ROOT, UserError

TASKS_DIR = REPO_ROOT / "tasks"
TASK_TYPES = ("classification", "generation")
FORMATS = ("csv", "tsv", "jsonl", "json", "textdir")
CLEANUPS = ("html_unescape", "strip_quotes", "squash_whitespace")
KNOWN_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa", "exact_match",
                 "rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1")
DEFAULT_METRICS = {
    "classification": ["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "cohen_kappa"],
    "generation": ["rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1"],
}


def norm_label(value) -> str:
    """Case- and whitespace-insensitive key for matching label spellings."""
    return " ".join(str(value).split()).casefold()


def _raw_key(value) -> str:
    # Raw values from CSV are strings, from JSON maybe ints/floats/bools: compare as normalised text.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = int(value)
    return norm_label(value)


@dataclass
class Label:
    name: str
    definition: str = ""


@dataclass
class TaskSpec:
    name: str
    type: str
    source: str  # the file the spec came from, named in every error
    description: str = ""
    data: dict = field(default_factory=dict)
    labels: list = field(default_factory=list)
    prompt: dict = field(default_factory=dict)
    merges: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    balance_per_label: int | None = None
    merge: str | None = None  # the merge applied, if any
    merge_map: dict | None = None  # original label -> merged label
    base_labels: list | None = None  # the labels the data is written in (before a merge)
    unmerged: "TaskSpec | None" = None  # the spec before the merge (what is saved with results)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, raw: dict, source: str) -> "TaskSpec":
        if not isinstance(raw, dict):
            raise UserError(f"task spec {source}: expected a mapping at the top level")
        known = {"name", "type", "description", "data", "labels", "prompt", "merges", "metrics", "balance_per_label"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"task spec {source}: unknown key(s) {unknown}; known: {sorted(known)}")
        for key in ("name", "type", "data", "prompt"):
            if key not in raw:
                raise UserError(f"task spec {source}: missing required key '{key}'")
        labels = []
        for item in raw.get("labels") or []:
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "definition"}:
                raise UserError(f"task spec {source}: each label is {{name, definition}}, got {item!r} "
                                "(quote a definition that holds a comma inside {...})")
            labels.append(Label(str(item["name"]), str(item.get("definition", "") or "")))
        spec = cls(
            name=str(raw["name"]), type=str(raw["type"]), source=source,
            description=str(raw.get("description", "") or ""), data=dict(raw["data"] or {}),
            labels=labels, prompt=dict(raw["prompt"] or {}), merges=dict(raw.get("merges") or {}),
            metrics=list(raw.get("metrics") or DEFAULT_METRICS.get(str(raw["type"]), [])),
            balance_per_label=raw.get("balance_per_label"),
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        src = self.source
        if self.type not in TASK_TYPES:
            raise UserError(f"task spec {src}: type must be one of {TASK_TYPES}, got {self.type!r}")
        if self.type == "classification":
            if not self.labels:
                raise UserError(f"task spec {src}: a classification task needs a non-empty 'labels' list")
            seen = {}
            for label in self.labels:
                key = norm_label(label.name)
                if not key:
                    raise UserError(f"task spec {src}: empty label name")
                if key in seen:
                    raise UserError(f"task spec {src}: duplicate label '{label.name}' (same as '{seen[key]}')")
                seen[key] = label.name
            if "label_column" not in self.data:
                raise UserError(f"task spec {src}: data.label_column is required for classification")
            for raw_value, name in (self.data.get("label_map") or {}).items():
                if norm_label(name) not in seen:
                    raise UserError(f"task spec {src}: label_map sends {raw_value!r} to '{name}', which is not a label")
            for item in self.data.get("bins") or []:
                if norm_label(item.get("label", "")) not in seen:
                    raise UserError(f"task spec {src}: bin {item!r} names no label")
        else:
            if "target_column" not in self.data:
                raise UserError(f"task spec {src}: data.target_column is required for generation")
        if "text" not in self.data:
            raise UserError(f"task spec {src}: data.text (a template such as '{{post}}') is required")
        template_fields(self.data["text"], src)
        if "{text}" not in self.prompt.get("input", "{text}"):
            raise UserError(f"task spec {src}: prompt.input must contain {{text}}")
        splits = self.data.get("splits") or {}
        if not splits and not self.data.get("hub"):
            raise UserError(f"task spec {src}: data.splits (local files) or data.hub is required")
        for split, file_spec in splits.items():
            if not isinstance(file_spec, dict) or "path" not in file_spec:
                raise UserError(f"task spec {src}: data.splits.{split} needs a 'path'")
            fmt = file_spec.get("format") or infer_format(file_spec["path"])
            if fmt not in FORMATS:
                raise UserError(f"task spec {src}: data.splits.{split}: format must be one of {FORMATS}, got {fmt!r}")
        for metric in self.metrics:
            if metric not in KNOWN_METRICS:
                raise UserError(f"task spec {src}: unknown metric {metric!r}; known: {KNOWN_METRICS}")
        for step in self.data.get("text_cleanup") or []:
            if step not in CLEANUPS:
                raise UserError(f"task spec {src}: unknown text_cleanup step {step!r}; known: {CLEANUPS}")
        for name in self.merges:
            self.merged(name)  # validates the merge

    # ---------------------------------------------------------------- labels and merges
    @property
    def label_names(self) -> list:
        return [label.name for label in self.labels]

    def label_for(self, value, where: str = "", labels: list | None = None) -> str:
        """The canonical label name for a label spelling (case/space-insensitive)."""
        labels = self.labels if labels is None else labels
        key = norm_label(value)
        for label in labels:
            if norm_label(label.name) == key:
                return label.name
        names = [label.name for label in labels]
        raise UserError(f"task {self.name} ({self.source}): label {value!r}{where} is not in the label set {names}")

    def merged(self, merge_name: str | None) -> "TaskSpec":
        """A new spec whose labels are the named merge's; merge_map sends old labels to new ones."""
        if not merge_name:
            return self
        if self.type != "classification":
            raise UserError(f"task {self.name} ({self.source}): merges apply to classification tasks only")
        if merge_name not in self.merges:
            raise UserError(f"task {self.name} ({self.source}): unknown merge {merge_name!r}; known: {sorted(self.merges) or 'none'}")
        merge = self.merges[merge_name] or {}
        groups = merge.get("labels") or []
        if not groups:
            raise UserError(f"task spec {self.source}: merge {merge_name} has no labels")
        mapping, new_labels = {}, []
        for group in groups:
            if not isinstance(group, dict) or set(group) - {"name", "definition", "from"}:
                raise UserError(f"task spec {self.source}: merge {merge_name}: each label is {{name, definition, from}}, "
                                f"got {group!r}")
            if "name" not in group or not group.get("from"):
                raise UserError(f"task spec {self.source}: merge {merge_name}: each label needs 'name' and 'from'")
            new_labels.append(Label(str(group["name"]), str(group.get("definition", "") or "")))
            for old in group["from"]:
                old_name = self.label_for(old, where=f" in merge {merge_name}")
                if old_name in mapping:
                    raise UserError(f"task spec {self.source}: merge {merge_name} maps label '{old_name}' twice "
                                    f"(to '{mapping[old_name]}' and '{group['name']}')")
                mapping[old_name] = str(group["name"])
        missing = [name for name in self.label_names if name not in mapping]
        if missing:
            raise UserError(f"task spec {self.source}: merge {merge_name} leaves label(s) {missing} unmapped")
        spec = copy.deepcopy(self)
        spec.labels, spec.merges, spec.merge, spec.merge_map = new_labels, {}, merge_name, mapping
        spec.base_labels, spec.unmerged = self.labels, self
        spec.name = f"{self.name}-{merge_name}"
        spec.prompt = {**self.prompt, **(merge.get("prompt") or {})}
        spec.validate_labels_only()
        return spec

    def with_merge(self, merge_name: str, groups: list) -> "TaskSpec":
        """The spec merged by an ad-hoc merge (list of {name, from}), validated like a named one."""
        spec = copy.deepcopy(self)
        spec.merges = {**spec.merges, merge_name: {"labels": groups}}
        return spec.merged(merge_name)

    def validate_labels_only(self) -> None:
        keys = [norm_label(n) for n in self.label_names]
        if len(set(keys)) != len(keys):
            raise UserError(f"task spec {self.source}: merge {self.merge} has duplicate label names {self.label_names}")

    def saved_form(self) -> tuple:
        """(spec dict before any merge, merge name): what datasets and adapters store, so that
        reloading goes through the same merge code."""
        return (self.unmerged or self).to_dict(), self.merge

    def to_dict(self) -> dict:
        """A plain, YAML/JSON-ready copy."""
        out = {
            "name": self.name, "type": self.type, "description": self.description, "data": self.data,
            "labels": [{"name": l.name, "definition": l.definition} for l in self.labels],
            "prompt": self.prompt, "metrics": self.metrics, "balance_per_label": self.balance_per_label,
        }
        if self.merges:
            out["merges"] = self.merges
        return out

    # ---------------------------------------------------------------- examples
    def target_for(self, row: dict, where: str):
        """The gold label name (classification) or reference text (generation) of one row,
        or None when the row's raw value is listed in data.skip_values."""
        data = self.data
        if self.type == "generation":
            value = row.get(data["target_column"])
            if isinstance(value, str) and data.get("list_column"):
                value = parse_list(value, where)
            if isinstance(value, (list, tuple)):
                items = [str(v).strip() for v in value if str(v).strip()]
                # Deduplicate while keeping order: SBIC repeats a group once per annotator.
                items = list(dict.fromkeys(items))
                value = data.get("list_join", ", ").join(items)
            value = "" if value is None else str(value).strip()
            return value or str(data.get("empty_target", ""))
        raw = row.get(data["label_column"])
        if raw is None:
            raise UserError(f"task {self.name} ({self.source}): label column '{data['label_column']}' missing{where}")
        if _raw_key(raw) in {_raw_key(v) for v in data.get("skip_values") or []}:
            return None
        if data.get("bins"):
            try:
                number = float(raw)
            except (TypeError, ValueError):
                raise UserError(f"task {self.name} ({self.source}): label value {raw!r}{where} is not a number to bin") from None
            if math.isnan(number):
                raise UserError(f"task {self.name} ({self.source}): label value is empty{where}")
            for item in data["bins"]:
                if "below" not in item or number < float(item["below"]):
                    label = item["label"]
                    break
            else:
                raise UserError(f"task {self.name} ({self.source}): label value {raw!r}{where} falls in no bin")
        elif data.get("label_map"):
            table = {_raw_key(k): v for k, v in data["label_map"].items()}
            if _raw_key(raw) not in table:
                raise UserError(f"task {self.name} ({self.source}): label value {raw!r}{where} maps to no label; "
                                f"label_map knows {sorted(table)}")
            label = table[_raw_key(raw)]
        else:
            label = raw
        if self.merge_map:
            return self.merge_map[self.label_for(label, where, self.base_labels)]
        return self.label_for(label, where)

    def text_for(self, row: dict) -> str:
        text = render_fields(self.data["text"], row, self.source)
        for step in self.data.get("text_cleanup") or []:
            if step == "html_unescape":
                text = html.unescape(text)
            elif step == "strip_quotes":
                text = text.strip().strip('"').strip()
            elif step == "squash_whitespace":
                text = " ".join(text.split())
        return text


# -------------------------------------------------------------------- templates over columns
def template_fields(template: str, source: str) -> list:
    """Field names of a '{column}' template; only plain names (no attribute or index access)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise UserError(f"task spec {source}: bad template {template!r}: {err}") from None
    fields = [name for _, name, _, _ in parsed if name is not None]
    for name in fields:
        if not name or any(ch in name for ch in ".[]"):
            raise UserError(f"task spec {source}: template {template!r} may only name columns, got {{{name}}}")
    return fields


def render_fields(template: str, row: dict, source: str) -> str:
    values = {}
    for name in template_fields(template, source):
        if name not in row:
            raise UserError(f"task spec {source}: column '{name}' is not in the data (columns: {sorted(row)[:20]})")
        value = row[name]
        values[name] = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return template.format_map(values)


def parse_list(value: str, where: str = "") -> list:
    """SBIC stores lists as JSON text ('["women", "black folks"]')."""
    text = value.strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"expected a JSON list, got {value[:60]!r}{where}") from None
    return parsed if isinstance(parsed, list) else [parsed]


# -------------------------------------------------------------------- finding and loading specs
def data_dir() -> Path:
    return Path(os.environ.get("ANNOTUNE_DATA_DIR") or (REPO_ROOT.parent / "shared" / "data"))


def package_dir(name: str) -> Path:
    """An installed package's folder, without importing it (some wheel packages fail on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name} is not installed (run `make setup`, or pip install --no-deps it)")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_path(template: str) -> str:
    def package(match):
        return str(package_dir(match.group(1)))

    path = re.sub(r"\{package:([A-Za-z0-9_\.]+)\}", package, template)
    return path.replace("{data_dir}", str(data_dir()))


def infer_format(path: str) -> str:
    name = path.split("!")[-1].lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "json")):
        if name.endswith(suffix):
            return fmt
    return "textdir" if not Path(name).suffix else Path(name).suffix.lstrip(".")


def available_tasks() -> list:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _yaml_loader():
    """A safe YAML loader where yes/no/on/off stay strings (YAML 1.1 would turn the labels "yes"
    and "no" into booleans); only true/false are booleans."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return Loader


def load_task(name_or_path: str, merge: str | None = None) -> TaskSpec:
    """A task by name (tasks/NAME.yaml) or by the path of a YAML file, with an optional merge."""
    import yaml

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = TASKS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise UserError(f"unknown task {name_or_path!r}; shipped tasks: {', '.join(available_tasks())} "
                        "(or give the path of a task YAML file)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"task spec {path}: not valid YAML ({first})") from None
    return TaskSpec.from_dict(raw, source=str(path)).merged(merge)


def adhoc_task(data_path: str, text_column: str, label_column: str | None = None, test_path: str | None = None,
               id_column: str | None = None, task_type: str = "classification", system_prompt: str | None = None,
               instruction: str | None = None) -> TaskSpec:
    """A task spec from command-line flags: labels are the sorted distinct values of the label column."""
    from .data import read_table

    if not label_column:
        raise UserError("--data_path needs --label_column (and --text_column)")
    splits = {"train": {"path": data_path}}
    if test_path:
        splits["test"] = {"path": test_path}
    rows = read_table(data_path)
    if not rows:
        raise UserError(f"{data_path} has no rows")
    for column in [text_column, label_column] + ([id_column] if id_column else []):
        if column not in rows[0]:
            raise UserError(f"{data_path} has no column {column!r} (columns: {sorted(rows[0])})")
    raw = {
        "name": Path(data_path).stem, "type": task_type,
        "description": f"ad-hoc task from {data_path}",
        "data": {"splits": splits, "text": "{" + text_column + "}", "id_column": id_column},
        "prompt": {"system": system_prompt or "You are a careful annotator of text.",
                   "instruction": instruction or "Classify the text into one of the following categories: {label_list}.",
                   "input": "Text: {text}\nLabel:"},
    }
    if task_type == "classification":
        raw["data"]["label_column"] = label_column
        values = {" ".join(str(r.get(label_column, "")).split()) for r in rows} - {""}
        raw["labels"] = [{"name": v} for v in sorted(values, key=lambda v: (v.casefold(), v))]
        raw["data"]["skip_values"] = [""]
    else:
        raw["data"]["target_column"] = label_column
        raw["prompt"]["instruction"] = instruction or "Write the answer for the text."
        raw["prompt"]["input"] = "Text: {text}\nAnswer:"
    if id_column is None:
        del raw["data"]["id_column"]
    return TaskSpec.from_dict(raw, source=f"--data_path {data_path}")
