"""Host memory setting for the commands: glibc malloc keeps freed memory for reuse.

On CPU, XLA allocates each call's temporary buffer (0.1 GB for inference at 240x320,
2.6 GB for a training step at 240x320, batch 4) with ``malloc``. glibc serves blocks
that large with a fresh ``mmap`` and unmaps them on ``free``, so every call page-faults
its whole buffer in again, 4 KiB at a time. On the 2-core CPU machine that was 680 000
faults and 1.3 s of kernel time per 4.6 s training step at 240x320, and a quarter of
the CPU time at 120x160.

So the commands run with three glibc tunables (:data:`TUNABLES`):

* ``arena_max=1``: one malloc arena for all threads (another thread's arena cannot hold
  such a block and would ``mmap`` it anyway);
* ``mmap_max=0``: large blocks come from the heap too;
* ``trim_threshold=2**62``: freed memory is not returned to the system.

After the first calls no call page-faults. A 240x320 training step took 3.9-4.1 s
instead of 4.6 s on an AMD EPYC machine (measured with ``hugetlb=1`` also set, see
below), and 3.36-3.47 s with no faults on an Intel Xeon machine. The cost: the process
keeps its peak heap until it exits (3.9 GB for 240x320 training, up to 8.4 GB with
PyTorch's training in the same process, as freed blocks fragment).

Transparent huge pages are left off. With ``hugetlb=1`` added, a JAX call right after a
PyTorch call in the same process was 8% faster on one machine (AMD EPYC). But on a
Linux 6.18 machine (Intel Xeon) the heap's huge pages were split and faulted in again,
4 KiB at a time, on every call of a process that runs JAX alone: 660 000 faults and
1.1 s of kernel time per 240x320 training step (3.75 s against 3.4 s without), 190 000
faults and 0.3 s per 120x160 step. Huge pages with ``mmap`` (``hugetlb=1`` alone) were
worse still: once memory was fragmented, the kernel spent 4-6 s per step on
compaction.

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
