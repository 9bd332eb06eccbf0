"""What happens at an epoch's end (or every N steps) while train.py trains: a log row per step,
validation with the real evaluation, adapters saved as --save_epochs plans, the best epoch kept,
early stopping, and Ctrl-C turned into a checkpoint and a clean stop. EvaluateAndSave is a
TrainerCallback: it runs before the Trainer writes that point's checkpoint."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from ..base.cli import UserError
from ..base.faults import crash_point
from ..base.files import append_jsonl, atomic_write_jsonl, read_jsonl


def parse_save_epochs(text, last) -> tuple:
    """--save_epochs as (epochs to save, what else to keep). Default: nothing fixed, keep 'best' (the
    epoch with the best validation score). '1,2,3' saves those and keeps the best too; 'last' and
    'all' keep the last or every epoch."""
    keep = "best"
    if not text or not text.strip():
        return set(), keep
    epochs = set()
    for part in (x.strip() for x in text.split(",") if x.strip()):
        if part in ("best", "last", "all"):
            keep = part if part != "best" else keep
            continue
        try:
            epochs.add(int(part))
        except ValueError:
            raise UserError(f"--save_epochs takes comma-separated epochs, best, last or all; got {text!r}") from None
    if epochs and min(epochs) < 1:
        raise UserError(f"--save_epochs {text}: epochs count from 1")
    if last and epochs and max(epochs) > last:
        raise UserError(f"--save_epochs {text}: the run has only {last} epochs")
    return epochs, keep


@dataclass
class SavePlan:
    """When to evaluate, checkpoint and save adapters, and when to stop early."""
    metric: str  # the validation metric that decides the best epoch (macro_f1, rougeL)
    eval_strategy: str = "epoch"  # epoch, steps, no
    eval_steps: int = 0
    save_epochs: set = field(default_factory=set)  # epochs whose adapter is saved whatever their score
    keep: str = "best"  # best: also the epoch with the best validation score (the last one without
    #                     validation); last: also the last epoch; all: every epoch
    last_epoch: int | None = None  # --epoch N (None with --stop_condition steps)
    select: str = ""  # the validation value that picks the best epoch (default: metric)
    by_steps: bool = False  # --stop_condition steps: the adapter is saved at the last step
    keep_best: bool = False
    patience: int = 0
    save_every_steps: int = 0
    stop_after_steps: int = 0  # tests: simulate a crash after this many steps (a checkpoint is written)


@contextmanager
def stop_on_ctrl_c(callback, report=print):
    """While training: the first Ctrl-C finishes the current step, writes a checkpoint and stops (so
    --resume_from_checkpoint continues exactly there); a second one stops at once."""
    import signal

    def handler(signum, frame):
        if callback.stop_requested:
            raise KeyboardInterrupt
        callback.stop_requested = True
        report("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit at once)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class EvaluateAndSave(TrainerCallback):
    """train.py's side of the loop: per-step log rows, validation with the real evaluation
    (`evaluate()` -> metrics), adapters saved at the planned epochs (`save(name_suffix, epoch, step,
    metrics)`), best-epoch tracking, early stopping. Only the main process evaluates and writes."""

    def __init__(self, plan: SavePlan, evaluate, save, log_path: Path, is_main: bool, report=print, discard=None):
        self.plan, self.evaluate, self.save, self.log_path, self.is_main = plan, evaluate, save, log_path, is_main
        self.report, self.discard = report, discard  # discard(name_suffix): remove an adapter no longer kept
        self.trainer = None  # set by attach()
        self.history, self.best, self.bad_epochs = [], {}, 0
        self.interrupted, self._start = False, None
        self.stop_requested = False  # Ctrl-C (or the tests' stop_after_steps): checkpoint and stop

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def restore(self, step: int) -> None:
        """On resume: the log keeps rows up to the checkpoint's step, and history, best and patience
        are rebuilt from its evaluations (so they equal the uninterrupted run's)."""
        if not (self.is_main and self.log_path.exists()):
            return
        rows = [r for r in read_jsonl(self.log_path, torn_tail=True) if r["step"] <= step]
        atomic_write_jsonl(self.log_path, rows)  # a kill here leaves the old log whole
        for row in rows:
            if row["type"] == "eval" and row.get("at") == "epoch":
                self._track(row["epoch"], row["step"], row)

    def on_step_begin(self, training_args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, training_args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._start
        t, window = self.trainer, self.trainer.window
        t.totals["train_seconds"] += elapsed
        if self.is_main:
            append_jsonl(self.log_path, {"type": "step", "step": state.global_step, "epoch": state.epoch,
                                         "loss": window["loss"] / max(window["batches"], 1),
                                         "lr": t.lr_scheduler.get_last_lr()[0], "tokens": window["tokens"],
                                         "tokens_per_s": window["tokens"] / elapsed if elapsed else None})
        t.window = {"loss": 0.0, "batches": 0, "tokens": 0}
        crash_point("train.step")
        plan = self.plan
        if plan.eval_strategy == "steps" and state.global_step % plan.eval_steps == 0 and self.is_main:
            metrics = self.evaluate()
            self._log_eval(state.epoch, state.global_step, metrics, "steps")
            self.report(f"step {state.global_step}: validation {plan.metric} {metrics.get(plan.metric, float('nan')):.3f}")
        if plan.save_every_steps and state.global_step % plan.save_every_steps == 0:
            control.should_save = True
        if plan.stop_after_steps and state.global_step >= plan.stop_after_steps:
            self.stop_requested = True
        if self.stop_requested and abs(state.epoch - round(state.epoch)) > 1e-6:
            # Mid-epoch: checkpoint this step and stop. At an epoch's last step on_epoch_end stops
            # instead, after the epoch's evaluation and adapters, so none of them is skipped.
            control.should_save, control.should_training_stop, self.interrupted = True, True, True
        return control

    def on_epoch_end(self, training_args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = False  # the checkpoint of the interruption is written already
            return control
        epoch, step = math.ceil(state.epoch - 1e-9), state.global_step
        done = self.plan.by_steps and step >= state.max_steps
        stop = False
        if self.is_main:
            metrics = self.evaluate() if self.plan.eval_strategy == "epoch" else {}
            if metrics:
                self._log_eval(epoch, step, metrics, "epoch")
                self._print_epoch(epoch, metrics)
            previous = self.best.get("epoch")
            best = self._track(epoch, step, metrics)
            stop = bool(self.plan.patience) and self.bad_epochs >= self.plan.patience
            last = done or stop or epoch >= (self.plan.last_epoch or float("inf"))
            self._keep(epoch, step, metrics, best, last, previous)
            crash_point("train.after_save")
            if stop:
                self.report(f"early stopping: no better validation {self._select} for {self.bad_epochs} epochs")
            if self.stop_requested and not last:
                control.should_save, stop, self.interrupted = True, True, True
        if self.trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop], from_process=0)[0]
        self.trainer.accelerator.wait_for_everyone()
        control.should_training_stop = control.should_training_stop or stop
        return control

    def _keep(self, epoch, step, metrics, best, last, previous) -> None:
        """Save this epoch's adapter if the plan wants it; a best epoch replaces the previous best
        unless that one was asked for by number. Runs before the Trainer writes this epoch's
        checkpoint, so a crash in here repeats the whole epoch end on resume."""
        plan = self.plan
        # With no validation score at any epoch, "best" means the last.
        wanted = (epoch in plan.save_epochs or plan.keep == "all" or (last and plan.by_steps)
                  or (plan.keep == "best" and best) or (last and (plan.keep == "last" or not self.best)))
        if wanted:
            self.save(f"step{step}" if plan.by_steps else f"epoch{epoch}", epoch, step, metrics)
        if best and plan.keep_best:
            self.save("best", epoch, step, metrics)
        if (best and plan.keep == "best" and previous is not None and previous != epoch
                and previous not in plan.save_epochs and self.discard):
            self.discard(f"epoch{previous}")

    @property
    def _select(self) -> str:
        return self.plan.select or self.plan.metric

    def _track(self, epoch, step, metrics) -> bool:
        """Record an epoch's evaluation; True when it is the best so far (ties keep the earlier).
        An epoch that gives every validation row the same label ('collapsed') ranks below every
        epoch that does not: on imbalanced data, always answering the majority scores a macro-F1
        near 0.5 for free, above an epoch that is learning the minority."""
        self.history.append({"epoch": epoch, "step": step, **{k: v for k, v in metrics.items() if k not in ("type", "at")}})
        value = metrics.get(self._select)
        if not _finite(value):
            return False
        rank = (not metrics.get("collapsed", False), value)
        if not self.best or rank > (not self.best.get("collapsed", False), self.best["value"]):
            self.best, self.bad_epochs = {"epoch": epoch, "step": step, "value": value, "metric": self._select,
                                          "collapsed": bool(metrics.get("collapsed", False))}, 0
            return True
        self.bad_epochs += 1
        return False

    def _log_eval(self, epoch, step, metrics, at):
        if metrics:
            append_jsonl(self.log_path, {"type": "eval", "at": at, "epoch": round(epoch, 3), "step": step, **metrics})
            if self.trainer.args.report_to:  # a tracker (--report_to) gets the validation metrics too
                self.trainer.log({f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})

    def _print_epoch(self, epoch, metrics):
        name = self.plan.metric
        ci = metrics.get("ci95", {}).get(name)
        self.report(f"epoch {epoch}: validation {name} {metrics[name]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                    + (f", accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else "")
                    + (" (collapsed: one label for every row)" if metrics.get("collapsed") else ""))
