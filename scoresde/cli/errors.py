"""How a run ends on bad input (one line, exit 2) or a bug (the traceback, exit 1), and warnings in one line."""
import contextlib
import os
import sys
import traceback
import warnings

from sde.errors import ConfigError, ConfigWarning, NonFiniteError, TrainingError
from scoresde.training import distributed


@contextlib.contextmanager
def one_line_errors():
    """Bad input (ConfigError, which covers bad data and checkpoints) and a training run that cannot go on end
    the run with ``error: ...`` on stderr and exit status 2 (HYDRA_FULL_ERROR=1 re-raises); anything else is
    a bug: its whole traceback is printed (Hydra would show only its message) and the exit status is 1.

    Under torchrun the processes leave together and the reason is printed once: by the first process to meet an
    error (distributed.announce_failure); the others leave with its exit status and without a word, whether they
    met the same error, an error caused by its leaving (a collective whose peer is gone), or none (the watchdog
    ends them). A collective that failed because a peer left without a word (killed: distributed.lost_peer) is
    not a bug here either: one line, exit status 2."""
    try:
        yield
    except (ConfigError, TrainingError, NonFiniteError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if distributed.announce_failure(2):
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        distributed.leave_after_report(2)
    except Exception as e:  # noqa: BLE001 - a bug: shown whole, never reduced to a line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        status = distributed.peer_failure()
        if status is not None:
            distributed.announce_failure(status)
            distributed.leave_after_report(status)
        if distributed.lost_peer(e):
            if distributed.announce_failure(2):
                print(f"error: {distributed.lost_peer_reason(e)}", file=sys.stderr)
            distributed.leave_after_report(2)
        if distributed.announce_failure(1):
            traceback.print_exc()
        distributed.leave_after_report(1)


def show_warnings_in_one_line():
    """A ConfigWarning prints as ``warning: ...`` on one line of stderr."""
    default = warnings.showwarning
    if getattr(default, "one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.one_line = True
    warnings.showwarning = show
