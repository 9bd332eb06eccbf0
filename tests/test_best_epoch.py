"""Which adapters a run keeps: by default only the epoch with the best validation score (a later
best replaces an earlier one), numbered --save_epochs on top, 'last' / 'all', and the fallbacks
(no validation score, early stopping, a resumed run)."""
import math
from types import SimpleNamespace

import pytest

from annotune.base.cli import UserError
from annotune.training.epoch_end import EvaluateAndSave, SavePlan, parse_save_epochs


class FakeRun:
    """The Trainer as the callback sees it, and an adapter folder as a set of names."""

    def __init__(self, scores, tmp_path, **plan):
        self.scores, self.kept, self.saved = list(scores), set(), []
        plan = {"metric": "macro_f1", "select": "selection_score", "last_epoch": len(self.scores), **plan}
        self.callback = EvaluateAndSave(SavePlan(**plan), self.evaluate, self.save, tmp_path / "log.jsonl", True,
                                        report=lambda line: None, discard=self.kept.discard)
        self.callback.attach(SimpleNamespace(accelerator=SimpleNamespace(num_processes=1, wait_for_everyone=lambda: 0),
                                             args=SimpleNamespace(report_to=[])))
        self.epoch = 0

    def evaluate(self):
        value = self.scores[self.epoch - 1]
        collapsed = isinstance(value, tuple)  # (score, "collapsed"): one label for every row
        value = value[0] if collapsed else value
        return {} if value is None else {"macro_f1": value, "selection_score": value, "collapsed": collapsed}

    def save(self, suffix, epoch, step, metrics):
        self.kept.add(suffix)
        self.saved.append(suffix)

    def run(self, epochs=None):
        """Epoch ends until the plan's last epoch or an early stop; returns the epochs run."""
        for _ in range(epochs or len(self.scores)):
            self.epoch += 1
            control = SimpleNamespace(should_training_stop=False, should_save=True)
            state = SimpleNamespace(epoch=float(self.epoch), global_step=10 * self.epoch, max_steps=10 * len(self.scores))
            self.callback.on_epoch_end(None, state, control)
            if control.should_training_stop:
                break
        return self.epoch


def test_default_keeps_only_the_best_epoch(tmp_path):
    run = FakeRun([0.30, 0.50, 0.40], tmp_path)
    run.run()
    assert run.kept == {"epoch2"} and run.saved == ["epoch1", "epoch2"]
    assert run.callback.best["epoch"] == 2


def test_a_collapsed_epoch_never_beats_one_that_predicts_several_labels(tmp_path):
    # drug_neutral (9:1), oversampling, seen in the defaults sweep: epoch 2 answered "not neutral"
    # for every validation row (macro-F1 0.469 for free) and was kept over epochs 1 and 3.
    run = FakeRun([0.428, (0.469, "collapsed"), 0.46], tmp_path)
    run.run()
    assert run.callback.best["epoch"] == 3 and run.kept == {"epoch3"}
    run = FakeRun([(0.47, "collapsed"), (0.48, "collapsed")], tmp_path)  # all collapsed: the best of them
    run.run()
    assert run.callback.best["epoch"] == 2 and run.callback.best["collapsed"]


def test_ties_keep_the_earlier_epoch_and_nan_is_never_best(tmp_path):
    run = FakeRun([0.5, 0.5, math.nan], tmp_path)
    run.run()
    assert run.kept == {"epoch1"}


def test_numbered_epochs_are_kept_beside_the_best(tmp_path):
    run = FakeRun([0.30, 0.50, 0.40, 0.45], tmp_path, save_epochs={1, 4})
    run.run()
    assert run.kept == {"epoch1", "epoch2", "epoch4"}


@pytest.mark.parametrize("keep,expected", [("last", {"epoch3"}), ("all", {"epoch1", "epoch2", "epoch3"})])
def test_last_and_all(tmp_path, keep, expected):
    run = FakeRun([0.30, 0.50, 0.40], tmp_path, keep=keep)
    run.run()
    assert run.kept == expected


def test_without_a_validation_score_the_last_epoch_is_kept(tmp_path):
    run = FakeRun([None, None, None], tmp_path)
    run.run()
    assert run.kept == {"epoch3"}


def test_early_stopping_keeps_the_best_not_the_interrupted_last(tmp_path):
    run = FakeRun([0.50, 0.40, 0.30, 0.60], tmp_path, patience=2)
    assert run.run() == 3
    assert run.kept == {"epoch1"}
    # The old default ('last') saved nothing when patience stopped the run early; now the stop epoch is kept.
    run = FakeRun([0.50, 0.40, 0.30, 0.60], tmp_path / "b", patience=2, keep="last")
    (tmp_path / "b").mkdir()
    assert run.run() == 3 and run.kept == {"epoch3"}


def test_a_resumed_run_replaces_the_best_saved_before_the_crash(tmp_path):
    first = FakeRun([0.50, 0.70, 0.60], tmp_path)
    first.run(epochs=1)
    assert first.kept == {"epoch1"}
    resumed = FakeRun([0.50, 0.70, 0.60], tmp_path)
    resumed.kept = first.kept
    resumed.callback.discard = resumed.kept.discard
    resumed.callback.restore(step=10)  # rebuilt from log.jsonl: epoch 1 is the best so far
    resumed.epoch = 1
    resumed.run(epochs=2)
    assert resumed.kept == {"epoch2"} and resumed.callback.best["epoch"] == 2


@pytest.mark.parametrize("text,expected", [
    (None, (set(), "best")), ("", (set(), "best")), ("1,3", ({1, 3}, "best")), ("last", (set(), "last")),
    ("all", (set(), "all")), ("2, last", ({2}, "last")), ("best", (set(), "best")),
])
def test_parse_save_epochs(text, expected):
    assert parse_save_epochs(text, 3) == expected


@pytest.mark.parametrize("text,message", [("1,x", "comma-separated"), ("0", "count from 1"), ("4", "only 3 epochs")])
def test_parse_save_epochs_refuses(text, message):
    with pytest.raises(UserError, match=message):
        parse_save_epochs(text, 3)
