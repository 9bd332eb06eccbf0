"""What every script shares at its edges: bad input ends in one line on stderr and exit status 2
(`UserError`, `run_cli`), argparse errors included, and library chatter stays off the console."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable


class UserError(Exception):
    """Bad input from the user: reported as one line, exit status 2, nothing written."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line plus "see --help" (not the whole usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser(doc: str) -> ArgumentParser:
    """The parser every script starts from: its docstring is the help text."""
    return ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


@dataclass(frozen=True)
class Parameter:
    """A setting that a registry entry declares (an estimator's, a sampling design's): the script's
    flag --NAME, with its type, choices, default and help (units and default stated); `low` and
    `high`, when set, the range a number must lie in (check_ranges)."""
    name: str
    default: object
    help: str
    choices: tuple | None = None
    type: Callable = str
    low: float | None = None
    high: float | None = None
    range_text: str = ""  # the range in words, for its error ("in (0, 1]")


def add_parameters(group, params) -> None:
    """A flag per Parameter (one per name: two entries may share a setting)."""
    seen = set()
    for param in params:
        if param.name not in seen:
            seen.add(param.name)
            group.add_argument(f"--{param.name}", type=param.type, choices=param.choices, default=param.default,
                               help=param.help.replace("%", "%%"))


def parameter_limits(params) -> dict:
    """check_ranges' limits of the Parameters that declare a range."""
    return {p.name: (p.low, p.high, p.range_text or f"in [{p.low}, {p.high}]") for p in params
            if p.low is not None or p.high is not None}


def check_ranges(p: ArgumentParser, values: dict, limits: dict) -> None:
    """values: the parsed flags ({flag: value}); limits: {flag: (lowest, highest, text)}; a value
    that is None is not checked. NaN and inf fail every range (a NaN learning rate trains to garbage
    without a word)."""
    import math

    for name, (low, high, text) in limits.items():
        value = values[name]
        if value is None:
            continue
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            p.error(f"--{name} {value}: must be {text}")


def note_ignored(p: ArgumentParser, values: dict, flags, reason: str) -> None:
    """One line on stderr for each flag given (not at its default; values: the parsed flags) that
    this call does not use."""
    given = [f for f in flags if values[f] != p.get_default(f)]
    if given:
        print(f"note: {', '.join('--' + f for f in given)} ignored: {reason}", file=sys.stderr)


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
    except OSError as err:  # a full disk anywhere (a checkpoint, a plot): one line, rerun resumes
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" while writing {err.filename}" if err.filename else ""
        print(f"error: no space left on device{where}; free space and rerun to resume where it stopped "
              "(train.py: with --resume_from_checkpoint)", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


def quiet_libraries() -> None:
    """Keep library chatter (load bars, deprecation notes, an optional-kernel notice) off the
    console; our own progress bars cover the long work."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry lines; hub.py fails fast instead
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*requires_grad.*detach.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
