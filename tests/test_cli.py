"""Every script answers --help without importing a heavy library, and its docstring is the manual;
bad flags are one line."""
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "datasets", "peft", "pandas", "sklearn", "accelerate", "trl")


@pytest.mark.parametrize("script", ["preprocess", "train", "evaluate", "merge_labels", "demo", "export"])
def test_help_documents_commands_and_imports_nothing_heavy(script):
    code = (f"import sys; sys.path.insert(0, '.'); import {script}\n"
            f"try:\n    {script}.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"python {script}.py" in out.stdout  # the docstring's runnable commands
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_a_bad_flag_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "train.py", "--epoch", "x"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "see --help" in out.stderr
