"""Run a command that dies with the process that started it:

    python -m worker.training.guard SIGNAL COMMAND [ARGS...]

Linux delivers SIGNAL to the command when its parent goes (the setting survives the exec), so a
torchrun launched by a worker that is killed stops its ranks instead of training on unowned.
"""

from __future__ import annotations

import os
import signal
import sys


def die_with_parent(signum: int) -> None:
    """Linux: this process gets `signum` when its parent dies (elsewhere: nothing happens)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signum)


def main(argv: list[str]) -> None:
    name, *command = argv
    die_with_parent(int(signal.Signals[name]))
    if os.getppid() == 1:  # the parent went before the setting took hold
        sys.exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
