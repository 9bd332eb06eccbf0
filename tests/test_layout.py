"""The layout a newcomer reads at a glance: scripts over one package of six stages (base, data,
model, labelling, training, estimation) whose imports only go from later stages to earlier ones,
no import circle, no module named like another or like the standard library, no function far over
60 lines, and the package's docstring naming every module."""
import ast
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "annotune"
STAGES = ("base", "data", "model", "labelling", "training", "estimation")  # each imports only those before it
LATER_THAN = {"training": {"estimation"}, "estimation": {"training"}}  # stages that are not before each other
SCRIPTS = ["preprocess.py", "train.py", "evaluate.py", "merge_labels.py", "demo.py", "export.py", "sample.py",
           "estimate.py", "learning_curve.py"]
MAX_FUNCTION_LINES = 62


def module_paths() -> dict:
    """{module name: its file}, every module of every stage."""
    return {p.stem: p for p in sorted(PACKAGE.glob("*/*.py")) if p.stem != "__init__"}


def package_modules():
    return sorted(module_paths())


def stage_of(module: str) -> str:
    return module_paths()[module].parent.name


def imports_of(path: Path) -> set:
    """Package modules a file imports (at any depth: imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.module:  # from .x import / from ..stage.x import / from ..stage import x
                parts = node.module.split(".")
                found.add(parts[-1])
                found.update(a.name for a in node.names)
            elif node.level:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("annotune."):
                found.add(node.module.split(".")[-1])
                found.update(a.name for a in node.names)
    return found & set(package_modules())


def test_the_package_is_its_stages_and_each_imports_only_earlier_ones():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(STAGES)
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]
    upward = []
    for module, path in module_paths().items():
        mine = STAGES.index(stage_of(module))
        for other in imports_of(path):
            theirs = stage_of(other)
            if STAGES.index(theirs) > mine or theirs in LATER_THAN.get(stage_of(module), ()):
                upward.append(f"{stage_of(module)}/{module} imports {theirs}/{other}")
    assert upward == []


def test_no_import_circle_in_the_package():
    graph = {m: imports_of(path) - {m} for m, path in module_paths().items()}
    state = {}

    def visit(node, path):
        if state.get(node) == "open":
            raise AssertionError(f"import circle: {' -> '.join(path + [node])}")
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in graph[node]:
            visit(nxt, path + [node])
        state[node] = "done"

    for module in graph:
        visit(module, [])


def stem(name: str) -> str:
    for suffix in ("ation", "ing", "ion", "er", "or", "s"):
        if name.endswith(suffix) and len(name) - len(suffix) >= 3:
            return name[: -len(suffix)]
    return name


def test_no_module_named_like_another_or_like_the_standard_library():
    names = package_modules()
    stems = [stem(n) for n in names]
    assert len(set(stems)) == len(stems), sorted(n for n in names if stems.count(stem(n)) > 1)
    assert not set(names) & set(sys.stdlib_module_names), set(names) & set(sys.stdlib_module_names)
    assert {Path(s).stem for s in SCRIPTS}.isdisjoint(names)


def test_the_package_docstring_names_every_module():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    assert [m for m in package_modules() if f"{m}.py" not in doc] == []


def test_no_function_far_over_sixty_lines():
    long = []
    for path in list(PACKAGE.rglob("*.py")) + [REPO / s for s in SCRIPTS] + list((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert long == []


def test_scripts_stand_on_the_package_only():
    for script in SCRIPTS:
        tree = ast.parse((REPO / script).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        others = {Path(s).stem for s in SCRIPTS} - {"preprocess", "train", "evaluate", "sample", "estimate"} \
            if script == "demo.py" \
            else {Path(s).stem for s in SCRIPTS}
        assert not imported & others, (script, imported & others)


def test_every_name_docs_architecture_cites_exists():
    """docs/architecture.md names `module.name` (a package module or a script, then an attribute
    path): each must resolve, so the map a newcomer follows is the code as it is."""
    import importlib
    import re

    scripts = {Path(s).stem for s in SCRIPTS}
    cited = set(re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)`", (REPO / "docs" / "architecture.md").read_text()))
    checked = 0
    for name in sorted(cited):
        module, *path = name.split(".")
        if path[-1] in ("py", "json", "jsonl", "md", "csv", "png") or not (module in scripts or module in package_modules()):
            continue
        target = importlib.import_module(module if module in scripts else f"annotune.{stage_of(module)}.{module}")
        for part in path:
            assert hasattr(target, part), f"docs/architecture.md cites {name}: {part} not found"
            target = getattr(target, part)
        checked += 1
    assert checked >= 30


def test_no_package_function_reads_a_scripts_namespace(in_tmp, monkeypatch, tiny_llama_dir, pol_run):
    """Every script's main on tiny inputs, with each attribute read of an argparse.Namespace
    recorded with the file that made it: the scripts read their flags, the package (cli.py, which
    builds the parsers, aside) never does."""
    import argparse
    import csv
    import json

    from conftest import DATA, run_script

    reads = []

    def recording(self, name):
        reads.append((sys._getframe(1).f_code.co_filename, name))
        return object.__getattribute__(self, name)

    monkeypatch.setattr(argparse.Namespace, "__getattribute__", recording)
    adapter = pol_run[-1]
    posts = in_tmp / "posts.csv"
    posts.write_text("text\n" + "".join(f"post number {i} about guns\n" for i in range(24)))
    steps = [("preprocess", ["--task", "politosphere", "--template", "llama2-chat", "--output_dir", "ds"]),
             ("train", ["--dataset_name", "ds", "--model_name", tiny_llama_dir, "--max_train_samples", 16,
                        "--max_eval_samples", 8, "--epoch", 1, "--quiet", "--output_dir", "run"]),
             ("evaluate", ["--adapters_name", adapter, "--base_only", "--max_samples", 8, "--bootstrap", 20,
                           "--quiet", "--output_dir", "ev"]),
             ("evaluate", ["--adapters_name", adapter, "--predict_file", posts, "--output", "out.csv", "--quiet"]),
             ("sample", ["--corpus", "out.csv", "--n", 12]),
             ("merge_labels", ["--input_file", DATA / "politosphere" / "daccord_yifei_v2_leo.json", "--merge",
                               "pol_unpol_oth", "--output_file", "merged.json"]),
             ("export", ["--adapters_name", adapter, "--output_dir", "merged"])]
    for script, argv in steps:
        assert run_script(script, argv) == 0, script
    with open(in_tmp / "out.sheet.csv", newline="") as handle:
        sheet = list(csv.DictReader(handle))
    labels = json.loads((adapter / "annotune.json").read_text())["labels"]
    with open(in_tmp / "done.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(sheet[0]))
        writer.writeheader()
        writer.writerows(dict(row, label=labels[k % 2]) for k, row in enumerate(sheet))
    assert run_script("estimate", ["--corpus", "out.csv", "--sheet", "done.csv", "--design", "out.design.json"]) == 0
    scripts = {str(REPO / s) for s in SCRIPTS}
    assert {f for f, _ in reads} & scripts  # the recorder saw the scripts read their flags
    from_package = sorted({(Path(f).relative_to(REPO).as_posix(), name) for f, name in reads
                           if f.startswith(str(PACKAGE)) and not f.endswith("base/cli.py")})
    assert from_package == []
