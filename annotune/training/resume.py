"""A training run folder: starting one, and resuming one safely. A resume must end exactly where the
uninterrupted run would: its arguments are checked against the run's manifest (those that change
the result must match), a finished run is left alone, and a run killed before its first checkpoint
starts over in the same folder (its log and adapters are rewritten as training repeats them)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..base.cli import UserError
from ..base.files import remove_dir

# Flags that may differ on resume: where and how output is shown, not what is trained.
FREE_ON_RESUME = {"resume_from_checkpoint", "overwrite_output_dir", "output_dir", "quiet", "report_to",
                  "eval_batch_size", "save_every_steps", "stop_after_steps", "record_examples",
                  "cpu_bf16",  # its resolved value is what must match: check_same_precision
                  "gradient_checkpointing"}  # the same loss and gradients, recomputed or kept


@dataclass
class RunFolder:
    path: Path
    checkpoint: str | None = None  # the Trainer checkpoint to resume from (None: start at step 0)
    resuming: bool = False
    finished: dict | None = None  # a finished run's result: nothing to do
    manifest: dict | None = None  # the run's manifest as first written (resuming only)

    def create(self, overwrite: bool) -> None:
        """An empty folder for a new run (--overwrite_output_dir replaces an old one); a resumed
        run's folder is kept as it is, less the staging folders of a killed save."""
        import shutil

        if self.resuming:
            for stale in self.path.glob(".*.tmp"):  # never published, never read
                remove_dir(stale)
            return
        if self.path.exists() and overwrite:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)


def open_run_folder(out: Path, arguments: dict, checkpoints: Path, overwrite: bool = False,
                    resume_from: str | None = None, inputs=(), added_later: dict | None = None) -> RunFolder:
    """The run folder `out`, checked; nothing is written (RunFolder.create does that, once every
    other check has passed, so a refused run leaves nothing that blocks the rerun). arguments:
    train.py's ({flag: value}; a resume's must match the manifest's); overwrite: replace a folder
    that holds a run; resume_from: 'latest' or a checkpoint folder; inputs: paths that a replaced
    folder must not hold."""
    from ..base.files import ensure_new_path

    out = Path(out)
    replacing = overwrite and not resume_from
    ensure_new_path(out, True, what="--output_dir", kind="dir", inputs=inputs if replacing else ())
    if resume_from:
        return resumed_folder(arguments, resume_from, out, checkpoints, added_later or {})
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds a run; pass --overwrite_output_dir, --resume_from_checkpoint "
                        "or another --output_dir")
    return RunFolder(out)


def resumed_folder(arguments: dict, resume_from: str, out: Path, checkpoints: Path, added_later: dict) -> RunFolder:
    from transformers.trainer_utils import get_last_checkpoint

    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise UserError(f"--resume_from_checkpoint: {out} holds no run (no manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    check_same_arguments(arguments, {**added_later, **manifest.get("args", {})})
    if manifest.get("result"):
        return RunFolder(out, resuming=True, finished=manifest["result"], manifest=manifest)
    if resume_from == "latest":
        checkpoint = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    else:
        checkpoint = resume_from
        if not (Path(checkpoint) / "trainer_state.json").exists():
            raise UserError(f"--resume_from_checkpoint {checkpoint} is not a Trainer checkpoint")
    if checkpoint:
        check_checkpoint(Path(checkpoint))
    return RunFolder(out, checkpoint, resuming=True, manifest=manifest)


def check_checkpoint(folder: Path) -> None:
    """Every file the resume will load, loaded once now as the Trainer will (torch's weights_only,
    safetensors), so a foreign or damaged checkpoint is one line before anything is written."""
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers.trainer_pt_utils import safe_globals  # the numpy types the Trainer's rng state needs

    for path in sorted(folder.iterdir()):
        try:
            if path.suffix in (".pt", ".pth", ".bin"):
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".safetensors":
                load_file(str(path))
        except pickle.UnpicklingError:
            raise UserError(f"{path} is not part of a checkpoint this project wrote: it holds objects torch's safe "
                            "loader (weights_only) refuses to run; resume from another checkpoint or start again") from None
        except (SafetensorError, EOFError, RuntimeError):
            raise UserError(f"{path} is damaged (it cannot be read whole); resume from another checkpoint or start "
                            "again") from None


def check_same_arguments(now: dict, before: dict) -> None:
    differ = [k for k in sorted(set(now) | set(before)) if k not in FREE_ON_RESUME and now.get(k) != before.get(k)]
    if differ:
        shown = "; ".join(f"--{k} {now.get(k)} (the run used {before.get(k)})" for k in differ[:3])
        raise UserError(f"--resume_from_checkpoint with other arguments: {shown}"
                        f"{' and more' if len(differ) > 3 else ''}; resume with the run's own arguments "
                        "(manifest.json) or start a new --output_dir")


def check_same_precision(first: dict, autocast: bool) -> None:
    """A resumed run goes on in the precision it trained in (manifest.json's bf16_autocast; runs from
    before --cpu_bf16 trained in fp32), whatever --cpu_bf16 auto makes of this machine."""
    used = bool(first.get("bf16_autocast", False))
    if used != autocast:
        raise UserError(f"--resume_from_checkpoint: the run trained {'under bf16 autocast' if used else 'in fp32'} "
                        f"and would go on {'under bf16 autocast' if autocast else 'in fp32'}: pass --cpu_bf16 "
                        f"{'on' if used else 'off'}")


def checkpoint_step(checkpoint) -> int:
    """The optimizer step a Trainer checkpoint was written at (0: none)."""
    if not checkpoint:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def resumed_manifest(first: dict, now: dict, checkpoint) -> dict:
    """The run's manifest as first written, plus when and from which step it was resumed."""
    entry = {k: now[k] for k in ("created", "command", "git_commit", "versions") if k in now}
    return dict(first, resumed=first.get("resumed", []) + [dict(entry, from_step=checkpoint_step(checkpoint))])
