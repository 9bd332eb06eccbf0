"""Fault injection for the tests. With ANNOTUNE_CRASH_AT=<point>[@<n>] in the environment, the n-th
pass (default: the first) through crash_point("<point>") ends the process at once with status 137,
as `kill -9` would: no cleanup, no finally clauses, no flush. ANNOTUNE_SIGINT_AT=<point>[@<n>]
sends the process a SIGINT there instead, as Ctrl-C would. Points: train.step (after an optimizer
step), train.evaluate (inside an epoch's validation pass), train.save (an adapter written to its
staging folder, not yet published), train.after_save (an epoch's adapters published, its
checkpoint not yet written), train.finish (the last checkpoint written, the run's summary not),
annotate.part (a part of the output written)."""
import os
import signal

_passes: dict = {}


def _due(variable: str, name: str) -> bool:
    wanted = os.environ.get(variable)
    if not wanted:
        return False
    point, _, nth = wanted.partition("@")
    if point != name:
        return False
    _passes[variable, name] = _passes.get((variable, name), 0) + 1
    return _passes[variable, name] == int(nth or 1)


def crash_point(name: str) -> None:
    if _due("ANNOTUNE_SIGINT_AT", name):
        os.kill(os.getpid(), signal.SIGINT)
    if _due("ANNOTUNE_CRASH_AT", name):
        os._exit(137)
