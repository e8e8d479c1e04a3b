"""The command-line layer: argv checks and --help (args), objects built from config nodes (build), the config
fitted to a checkpoint (checkpoint), the run directory and its lock (rundir), sweeps (sweep), CPU threads
(threads), one-line errors (errors), data checks (checks), old spellings (legacy), and the run itself (main)."""
from .args import check_group_choices, check_override_keys, help_text
from .build import build
from .errors import one_line_errors, show_warnings_in_one_line
from .sweep import SUMMARY, SweepSummary, cached_training, keep_for_sweep
from .threads import busy_cores, choose_threads

__all__ = ["build", "busy_cores", "cached_training", "check_group_choices", "check_override_keys", "choose_threads",
           "help_text", "keep_for_sweep", "one_line_errors", "show_warnings_in_one_line", "SUMMARY",
           "SweepSummary"]
