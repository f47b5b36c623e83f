"""Process exit codes shared by the launcher, the training loop and the SLURM scripts.

- ``EXIT_OK`` (0): the run finished (or the command succeeded).
- ``EXIT_CONFIG_ERROR`` (2): bad command line or configuration; retrying will not help, so SLURM
  scripts must not requeue. 2 matches what argparse uses for usage errors.
- ``EXIT_NUMERICAL_FAULT`` (3): a non-finite or spiking loss or gradient norm under
  ``faults.policy: stop`` (or rollbacks exhausted); the bad step was not applied, diagnostics are in
  ``<output_dir>/faults/``. Not requeued: the same batch would do it again.
- ``EXIT_SAVE_FAILED`` (74, ``EX_IOERR``): a checkpoint could not be written (disk full, read-only,
  quota, file-size limit); its partial directory was removed and ``latest`` names the previous one.
  Not requeued: the same save would fail again until someone frees space.
- ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` from sysexits.h): a rank received SIGUSR1 (preemption
  warning), all ranks agreed to stop, and a checkpoint was saved; the job should be requeued and will
  resume from that checkpoint. SLURM batch scripts test ``$? -eq 75`` to decide whether to
  ``scontrol requeue``.
- ``EXIT_INTERRUPTED`` (130 = 128 + SIGINT): Ctrl-C; the ranks saved and stopped. Not requeued.
- ``EXIT_CANCELLED`` (143 = 128 + SIGTERM): ``scancel`` or ``kill``; the ranks saved (when they could)
  and stopped. Not requeued by the batch script.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_NUMERICAL_FAULT = 3
EXIT_SAVE_FAILED = 74
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130
EXIT_CANCELLED = 143

__all__ = ["EXIT_OK", "EXIT_CONFIG_ERROR", "EXIT_NUMERICAL_FAULT", "EXIT_SAVE_FAILED", "EXIT_PREEMPTED", "EXIT_INTERRUPTED", "EXIT_CANCELLED"]
