"""Every script answers --help fast: no heavy imports before the arguments are parsed."""
import subprocess
import sys
import time

import pytest

from conftest import REPO


@pytest.mark.parametrize("script", ["preprocess.py", "train.py", "evaluate.py", "merge_labels.py"])
def test_help_is_fast_and_documents_commands(script):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0
    assert "python " + script in out.stdout  # the docstring's runnable commands
    assert elapsed < 2.0, f"{script} --help took {elapsed:.2f} s"


def test_scripts_import_no_heavy_library_at_module_level():
    code = ("import sys; sys.path.insert(0, '.'); import preprocess, train, evaluate, merge_labels; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
