"""User-facing errors, atomic file writes and run manifests.

Every script runs its main through `run_cli`, so bad input ends in one line on stderr and exit
status 2. Writers go through `atomic_write_*` / `ensure_new_path`, so an interrupted run or a
repeated command never leaves a half-written file or silently replaces an earlier result.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2, nothing written."""


def run_cli(main, argv=None) -> int:
    """Call main(argv); turn a UserError into a one-line message and exit status 2."""
    try:
        result = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if result is None else int(result)


def ensure_new_path(path, overwrite: bool = False, what: str = "output") -> Path:
    """Refuse to replace an existing file or non-empty folder unless overwrite is asked for."""
    path = Path(path)
    if path.exists() and not overwrite:
        if path.is_file() or any(path.iterdir()):
            raise UserError(f"{what} {path} already exists; choose another path or pass --overwrite")
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write text to path through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path, rows) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def publish_dir(tmp_dir, final_dir) -> Path:
    """Move a fully written temporary folder into place (the final path must not exist)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        if any(final_dir.iterdir()):
            raise UserError(f"{final_dir} appeared while writing; the new result is left in {tmp_dir}")
        final_dir.rmdir()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp_dir, final_dir)
    return final_dir


def staging_dir(final_dir) -> Path:
    """A fresh temporary folder beside final_dir, so publish_dir is a same-filesystem rename."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp"))


def remove_dir(path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict:
    from importlib import metadata

    names = ["torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate",
             "scikit-learn", "rouge-score", "bert-score"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_manifest(args, **extra) -> dict:
    """What a result needs to be reproduced: arguments, versions, git commit, command line."""
    import datetime

    return {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "args": vars(args) if hasattr(args, "__dict__") else dict(args),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def quiet_libraries() -> None:
    """Keep library chatter (load bars, deprecation notes, an optional-kernel notice) off the
    console; our own progress bars cover the long work."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*requires_grad.*detach.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
