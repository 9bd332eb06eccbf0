"""Task specs: one YAML file per annotation task, the single source of truth for labels,
definitions, prompt text, data sources and label merges. This module reads and validates them;
turning a source row into an example lives in examples.py, label matching and merges in labels.py.

Every key, its default and meaning, and a worked example per data layout: docs/tasks.md (the
schema itself is annotune/data/schema.py; an unknown key anywhere is refused with the closest valid
one). Reading the rows of each layout lives in sources.py.
"""
from __future__ import annotations

import copy
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..base.cli import UserError
from ..base.files import MAX_DEPTH, REPO_ROOT, read_bounded
from ..base.tables import format_names, infer_format
from .labels import Label, build_merge, find_label, norm_label
from .schema import SCHEMA, check_keys, check_types

TASKS_DIR = REPO_ROOT / "tasks"
TASK_TYPES = ("classification", "generation")
DEFAULT_TASK = "drug_reviews"  # the embedded default: the demo's task and every script's without --task
CLEANUPS = ("html_unescape", "strip_quotes", "squash_whitespace")
DEFAULT_SYSTEM = "You are a careful annotator of text."
DEFAULT_INSTRUCTION = "Classify the text into one of the following categories: {label_list}."


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
    balance_per_label: int | None = None
    merge: str | None = None  # the merge applied, if any
    merge_map: dict | None = None  # original label -> merged label
    unmerged: "TaskSpec | None" = None  # the spec before the merge (what is saved with results)

    @classmethod
    def from_dict(cls, raw: dict, source: str) -> "TaskSpec":
        if not isinstance(raw, dict):
            raise UserError(f"task spec {source}: expected a mapping at the top level")
        check_types(raw, source)
        labels = []
        for item in raw.get("labels") or []:  # first: a comma in an unquoted definition reads as a key
            if isinstance(item, str):
                item = {"name": item}
            if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "definition"}:
                raise UserError(f"task spec {source}: each label is {{name, definition}}, got {item!r} "
                                "(quote a definition that holds a comma inside {...})")
            labels.append(Label(str(item["name"]), str(item.get("definition", "") or "")))
        check_keys(raw, SCHEMA, "", source)  # an unknown key anywhere: one line, with the closest valid key
        for key in ("name", "type", "data", "prompt"):
            if key not in raw:
                raise UserError(f"task spec {source}: missing required key '{key}'")
        spec = cls(name=str(raw["name"]), type=str(raw["type"]), source=source,
                   description=str(raw.get("description", "") or ""), data=dict(raw["data"] or {}),
                   labels=labels, prompt=dict(raw["prompt"] or {}), merges=dict(raw.get("merges") or {}),
                   balance_per_label=raw.get("balance_per_label"))
        spec.validate()
        return spec

    def validate(self) -> None:
        src = self.source
        if self.type not in TASK_TYPES:
            raise UserError(f"task spec {src}: type must be one of {TASK_TYPES}, got {self.type!r}")
        if self.type == "classification":
            self._validate_labels()
        elif "target_column" not in self.data:
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
            if fmt not in format_names():
                raise UserError(f"task spec {src}: data.splits.{split}: format must be one of {format_names()}, "
                                f"got {fmt!r}")
        for step in self.data.get("text_cleanup") or []:
            if step not in CLEANUPS:
                raise UserError(f"task spec {src}: unknown text_cleanup step {step!r}; known: {CLEANUPS}")
        for name in self.merges:
            self.merged(name)  # validates the merge

    def _validate_labels(self) -> None:
        src = self.source
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

    # ---------------------------------------------------------------- labels and merges
    @property
    def finest_labels(self) -> list:
        """The labels before any merge (annotators vote on these), as Label objects."""
        return (self.unmerged or self).labels

    @property
    def label_names(self) -> list:
        return [label.name for label in self.labels]

    def task_label(self, value, where: str = "") -> str:
        """The label of this (possibly merged) task for a label spelling of the data: a label of the
        original set goes through the merge, so every reader applies a merge the same way."""
        context = f"task {self.name} ({self.source}){where}"
        if self.merge_map:
            return self.merge_map[find_label(value, self.unmerged.labels, context)]
        return find_label(value, self.labels, context)

    def label_before_merge(self, value, where: str = "") -> str | None:
        """The label before this spec's merge for a label spelling of the data; None unmerged."""
        if not self.merge_map:
            return None
        return find_label(value, self.unmerged.labels, f"task {self.name} ({self.source}){where}")

    def merged(self, merge_name: str | None) -> "TaskSpec":
        """A new spec whose labels are the named merge's; merge_map sends old labels to new ones."""
        if not merge_name:
            return self
        if self.type != "classification":
            raise UserError(f"task {self.name} ({self.source}): merges apply to classification tasks only")
        if merge_name not in self.merges:
            raise UserError(f"task {self.name} ({self.source}): unknown merge {merge_name!r}; "
                            f"known: {sorted(self.merges) or 'none'}")
        merge = self.merges[merge_name] or {}
        new_labels, mapping = build_merge(self.labels, merge_name, merge.get("labels") or [], self.source)
        spec = copy.deepcopy(self)
        spec.labels, spec.merges, spec.merge, spec.merge_map, spec.unmerged = new_labels, {}, merge_name, mapping, self
        spec.name = f"{self.name}-{merge_name}"
        spec.prompt = {**self.prompt, **(merge.get("prompt") or {})}
        return spec

    def with_merge(self, merge_name: str, groups: list) -> "TaskSpec":
        """The spec merged by an ad-hoc merge (list of {name, from}), validated like a named one."""
        spec = copy.deepcopy(self)
        spec.merges = {**spec.merges, merge_name: {"labels": groups}}
        return spec.merged(merge_name)

    # ---------------------------------------------------------------- saving
    def saved_form(self) -> tuple:
        """(spec dict before any merge, merge name): what datasets and adapters store, so that
        reloading (spec_from_saved) goes through the same merge code."""
        return (self.unmerged or self).to_dict(), self.merge

    def to_dict(self) -> dict:
        """A plain, YAML/JSON-ready copy."""
        out = {"name": self.name, "type": self.type, "description": self.description, "data": self.data,
               "labels": [{"name": l.name, "definition": l.definition} for l in self.labels],
               "prompt": self.prompt, "balance_per_label": self.balance_per_label}
        if self.merges:
            out["merges"] = self.merges
        return out


def spec_from_saved(spec_dict: dict, merge: str | None, source: str) -> TaskSpec:
    """The task spec stored in a dataset folder or adapter (saved_form), merged again."""
    spec_dict = {k: v for k, v in spec_dict.items() if k != "metrics"}  # a key of older saved specs, never read
    return TaskSpec.from_dict(spec_dict, source=source).merged(merge)


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


# -------------------------------------------------------------------- finding and loading specs
MAX_SPEC_BYTES = 1 << 20


def available_tasks() -> list:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _yaml_loader():
    """A safe YAML loader where yes/no/on/off stay strings (YAML 1.1 would turn the labels "yes"
    and "no" into booleans); only true/false are booleans."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            # Nesting is bounded (the composer recurses once per level).
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise UserError(f"task spec {self.name}: line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
                return self._compose_checked(parent, index)
            finally:
                self.depth -= 1

        def _compose_checked(self, parent, index):
            # An alias makes one node count many times: a few hundred bytes of nested aliases ("billion
            # laughs") expand to gigabytes as soon as the spec is walked or written. Specs refuse them.
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise UserError(f"task spec {self.name}: line {mark.line + 1}: YAML aliases (*name) are not "
                                "allowed in a task spec; write the value out")
            return super().compose_node(parent, index)

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
    text = read_bounded(path, MAX_SPEC_BYTES, "task spec",
                        f"a task spec is at most {MAX_SPEC_BYTES} (the rows belong in data files it names)")
    try:
        loader = _yaml_loader()(text)
        loader.name = str(path)
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"task spec {path}: not valid YAML ({first})") from None
    return TaskSpec.from_dict(raw, source=str(path)).merged(merge)


def adhoc_spec(name: str, source: str, data: dict, labels: list | None, task_type: str = "classification",
               system: str | None = None, instruction: str | None = None) -> TaskSpec:
    """A task spec built from flags or a hub dataset rather than a YAML file, with one default prompt."""
    raw = {"name": name, "type": task_type, "description": f"ad-hoc task from {source}", "data": data,
           "prompt": {"system": system or DEFAULT_SYSTEM, "instruction": instruction or DEFAULT_INSTRUCTION,
                      "input": "Text: {text}\nLabel:"}}
    if task_type == "classification":
        raw["labels"] = [{"name": v} for v in labels]
    else:
        raw["prompt"].update(instruction=instruction or "Write the answer for the text.", input="Text: {text}\nAnswer:")
    return TaskSpec.from_dict(raw, source=source)


def starter_yaml(spec: TaskSpec) -> str:
    """A task YAML to edit, from an ad-hoc spec (preprocess.py --write_task): the labels found in
    the data, placeholder definitions, the default prompt; schema in docs/tasks.md."""
    import yaml

    raw = spec.to_dict()
    raw["description"] = f"TODO: what the texts are, what the labels mean, where the data comes from ({spec.source})."
    raw["labels"] = [{"name": l.name, "definition": f"TODO: one sentence defining '{l.name}'."} for l in spec.labels]
    raw.pop("balance_per_label", None)
    header = ("# A starter task spec written by preprocess.py --write_task: edit the TODOs (the definitions go into\n"
              "# the prompt), then: python train.py --task <this file>. Every key: docs/tasks.md. Paths are read\n"
              "# relative to the folder you run the scripts from.\n")
    return header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True, width=100)


def sorted_labels(values) -> list:
    """Distinct non-empty label spellings, sorted for determinism (case-insensitively, then exactly)."""
    names = {" ".join(str(v).split()) for v in values} - {""}
    return sorted(names, key=lambda v: (v.casefold(), v))


def task_from_file(data_path: str, text_column: str, label_column: str | None = None, test_path: str | None = None,
                   id_column: str | None = None, task_type: str = "classification", system_prompt: str | None = None,
                   instruction: str | None = None) -> TaskSpec:
    """preprocess.py --data_path: a task spec from a file's columns; labels are its distinct values."""
    from ..base.tables import read_table

    if not label_column:
        raise UserError("--data_path needs --label_column (and --text_column)")
    rows = read_table(data_path)
    if not rows:
        raise UserError(f"{data_path} has no rows")
    for column in [text_column, label_column] + ([id_column] if id_column else []):
        if column not in rows[0]:
            raise UserError(f"{data_path} has no column {column!r} (columns: {sorted(rows[0])})")
    splits = {"train": {"path": data_path}, **({"test": {"path": test_path}} if test_path else {})}
    data = {"splits": splits, "text": "{" + text_column + "}", **({"id_column": id_column} if id_column else {})}
    labels = None
    if task_type == "classification":
        data.update(label_column=label_column, skip_values=[""])
        labels = sorted_labels(r.get(label_column, "") for r in rows)
    else:
        data["target_column"] = label_column
    return adhoc_spec(Path(data_path).stem, f"--data_path {data_path}", data, labels, task_type, system_prompt,
                      instruction)
