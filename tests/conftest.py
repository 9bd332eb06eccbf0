import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from annotune.base.files import data_dir  # noqa: E402  (the tests read the data where the scripts do)

DATA = data_dir()
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real models or several processes (seconds to a minute each)")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one); run there with pytest -m cuda")


@pytest.fixture(scope="session")
def smol_tok():
    from tiny_models import smol_tokenizer

    return smol_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tok):
    from tiny_models import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer=smol_tok)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    from tiny_models import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    from tiny_models import tiny_t5

    return tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a script in an empty folder (its default outputs land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_script(name, argv):
    """Call a top-level script's main(argv) as the command line would; returns the exit status."""
    import importlib

    from annotune.base.cli import run_cli

    module = importlib.import_module(name)
    return run_cli(module.main, [str(a) for a in argv])


@pytest.fixture(scope="session")
def pol_run(tmp_path_factory, tiny_llama_dir):
    """A 2-epoch Politosphere pol/unpol/oth run on the tiny model, adapters at epochs 1 and 2."""
    folder = tmp_path_factory.mktemp("polrun")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert run_script("train", ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
                                    "--model_name", tiny_llama_dir,
                                    "--template", "llama2-chat", "--epoch", 2, "--save_epochs", "1,2", "--quiet",
                                    "--learning_rate", "3e-3", "--eval_strategy", "no", "--output_dir", "run"]) == 0
    finally:
        os.chdir(cwd)
    return sorted(p for p in (folder / "run").iterdir() if "epoch" in p.name)
