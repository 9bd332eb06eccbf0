"""Fault injection for the tests. With ANNOTUNE_CRASH_AT=<point>[@<n>] in the environment, the n-th
pass (default: the first) through crash_point("<point>") ends the process at once with status 137,
as `kill -9` would: no cleanup, no finally clauses, no flush. ANNOTUNE_SIGINT_AT=<point>[@<n>]
sends the process a SIGINT there instead, as Ctrl-C would. Points: train.step (after an optimizer
step), train.evaluate (inside an epoch's validation pass), train.save (an adapter written to its
staging folder, not yet published), train.after_save (an epoch's adapters published, its
checkpoint not yet written), train.finish (the last checkpoint written, the run's summary not),
annotate.part (a part of the output written). ANNOTUNE_PAUSE_AT=<point>[@<n>]:<file> makes the
process create <file> there and wait until it is removed (tests that order two processes).
ANNOTUNE_ENOSPC_AT=<point>[@<n>] raises "no space left on device" there (annotate.write: inside
a part's write)."""
import os
import signal

_passes: dict = {}
IN_PROCESS = False  # tests that run a script in their own process: raise SimulatedKill instead of exiting


class SimulatedKill(BaseException):
    """A kill -9 inside the test process (not an Exception: no handler of ours catches it)."""


def reset() -> None:
    _passes.clear()


def _due(variable: str, name: str) -> bool:
    wanted = os.environ.get(variable)
    if not wanted:
        return False
    point, _, nth = wanted.partition("@")
    if point != name:
        return False
    _passes[variable, name] = _passes.get((variable, name), 0) + 1
    return _passes[variable, name] == int(nth or 1)


def _due_value(wanted: str, name: str, variable: str) -> bool:
    point, _, nth = wanted.partition("@")
    if point != name:
        return False
    _passes[variable, name] = _passes.get((variable, name), 0) + 1
    return _passes[variable, name] == int(nth or 1)


def crash_point(name: str) -> None:
    pause = os.environ.get("ANNOTUNE_PAUSE_AT", "")
    if pause and ":" in pause:
        point, _, marker = pause.partition(":")
        if _due_value(point, name, "ANNOTUNE_PAUSE_AT"):
            import time

            open(marker, "w").close()
            while os.path.exists(marker):
                time.sleep(0.05)
    if _due("ANNOTUNE_ENOSPC_AT", name):
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if _due("ANNOTUNE_SIGINT_AT", name):
        os.kill(os.getpid(), signal.SIGINT)
    if _due("ANNOTUNE_CRASH_AT", name):
        if IN_PROCESS:
            raise SimulatedKill(name)
        os._exit(137)
