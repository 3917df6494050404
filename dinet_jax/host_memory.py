"""Host memory setting for the commands: glibc malloc keeps freed memory for reuse.

On CPU, XLA allocates each call's temporary buffer (0.1 GB for inference at 240x320,
2.6 GB for a training step at 240x320, batch 4) with ``malloc``. glibc serves blocks
that large with a fresh ``mmap`` and unmaps them on ``free``, so every call page-faults
its whole buffer in again, 4 KiB at a time. On the 2-core CPU machine that is 680 000
faults and 1.3 s of kernel time per 4.6 s training step at 240x320, and a quarter of
the CPU time at 120x160. Transparent huge pages (``glibc.malloc.hugetlb=1``) make the
faults cheap until memory is fragmented: after a PyTorch step in the same process the
kernel compacted memory for 4-6 s per JAX step.

So the commands run with three glibc tunables: one malloc arena for all threads
(``arena_max=1``; other arenas could not hold the block and would ``mmap`` it anyway),
no ``mmap`` (``mmap_max=0``) and no returning of freed memory to the system
(``trim_threshold`` above any size). The buffer is then taken from, and given back to,
the heap; after the first calls no call faults at all. The cost: the process keeps its
peak heap (6 GB for 240x320 training next to PyTorch, 3.8 GB alone) until it exits.

glibc reads tunables only when a process starts, so :func:`restart_with_malloc_tuning`
re-executes the current command (same PID, arguments and interpreter) with them added
to ``GLIBC_TUNABLES``. ``train.py``, ``eval.py``, ``python -m dinet_jax.bench``,
``python -m dinet_jax.predict`` and ``benchmarks/bench_vs_torch.py`` call it first
thing. It does nothing off Linux/glibc, when ``GLIBC_TUNABLES`` already sets a
``glibc.malloc`` tunable (the user's choice, or the restarted process), or with
``DINET_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

TUNABLES = ('glibc.malloc.arena_max=1', 'glibc.malloc.mmap_max=0',
            f'glibc.malloc.trim_threshold={2**62}')
ENV_SWITCH = 'DINET_MALLOC_TUNING'


def _is_glibc() -> bool:
  return sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc'


def malloc_tuning_env(environ: Mapping[str, str], glibc: bool) -> dict[str, str] | None:
  """The environment to restart with, or None when no restart is wanted or possible."""
  if environ.get(ENV_SWITCH, '1') == '0' or not glibc:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.' in tunables:  # Already set (by us, or by the user's choice).
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = ':'.join(([tunables] if tunables else []) + list(TUNABLES))
  return env


def malloc_tuning_active(environ: Mapping[str, str] | None = None) -> bool:
  """Whether this process was started with :data:`TUNABLES`."""
  tunables = (os.environ if environ is None else environ).get('GLIBC_TUNABLES', '')
  return set(TUNABLES) <= set(tunables.split(':'))


def restart_with_malloc_tuning() -> None:
  """Re-executes this command with :data:`TUNABLES` (see the module docstring); returns
  without doing anything where that does not apply. Call it first thing in a command's
  ``__main__``: whatever ran before it runs twice."""
  if not sys.argv or sys.argv[0] in ('', '-'):  # Interactive, or a script read from stdin.
    return
  env = malloc_tuning_env(os.environ, _is_glibc())
  if env is None:
    return
  argv = list(getattr(sys, 'orig_argv', None) or [sys.executable, *sys.argv])
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)
