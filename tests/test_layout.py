"""The layout a newcomer reads at a glance: scripts over one package, no import circle, no module
named like another or like the standard library, no function far over 60 lines, and the package's
docstring naming every module."""
import ast
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "annotune"
SCRIPTS = ["preprocess.py", "train.py", "evaluate.py", "merge_labels.py", "demo.py", "export.py", "sample.py",
           "estimate.py"]
MAX_FUNCTION_LINES = 62


def package_modules():
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports_of(path: Path) -> set:
    """Package modules a file imports (at any depth: imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("annotune."):
                found.add(node.module.split(".")[1])
    return found & set(package_modules())


def test_no_import_circle_in_the_package():
    graph = {m: imports_of(PACKAGE / f"{m}.py") - {m} for m in package_modules()}
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
    for path in list(PACKAGE.glob("*.py")) + [REPO / s for s in SCRIPTS] + list((REPO / "bench").glob("*.py")):
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
        target = importlib.import_module(module if module in scripts else f"annotune.{module}")
        for part in path:
            assert hasattr(target, part), f"docs/architecture.md cites {name}: {part} not found"
            target = getattr(target, part)
        checked += 1
    assert checked >= 30
