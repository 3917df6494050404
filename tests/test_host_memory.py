"""The commands' restart with glibc malloc set to reuse freed memory (host_memory)."""

import os
import subprocess
import sys
import textwrap

import pytest

from dinet_jax import host_memory as hm


def test_env_adds_the_tunables():
  env = hm.malloc_tuning_env({'PATH': '/bin'}, glibc=True)
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': ':'.join(hm.TUNABLES)}
  assert hm.malloc_tuning_active(env)
  env = hm.malloc_tuning_env({'GLIBC_TUNABLES': 'glibc.rtld.nns=2'}, glibc=True)
  assert env['GLIBC_TUNABLES'] == 'glibc.rtld.nns=2:' + ':'.join(hm.TUNABLES)
  assert hm.malloc_tuning_active(env)


@pytest.mark.parametrize('environ, glibc', [
    ({'DINET_MALLOC_TUNING': '0'}, True),  # turned off by the user
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, True),  # the user's own malloc choice
    ({'GLIBC_TUNABLES': ':'.join(hm.TUNABLES)}, True),  # restarted already
    ({}, False),  # not glibc
])
def test_no_restart(environ, glibc):
  assert hm.malloc_tuning_env(environ, glibc) is None


def test_active_needs_every_tunable():
  assert not hm.malloc_tuning_active({})
  for left_out in hm.TUNABLES:
    rest = [t for t in hm.TUNABLES if t != left_out]
    assert not hm.malloc_tuning_active({'GLIBC_TUNABLES': ':'.join(rest)}), left_out


# Restarts, then mallocs 256 MiB twice, touching every page, with a free in between, and
# prints the page faults of the second round. Without the tunables glibc maps the block
# afresh (65 536 faults of 4 KiB pages, 128 of huge ones); with them the freed block is
# reused (no faults).
_CHILD = textwrap.dedent('''
    import ctypes, os, resource, sys
    print('start', sys.argv[1:], flush=True)
    from dinet_jax import host_memory
    host_memory.restart_with_malloc_tuning()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 256 << 20
    for round in range(2):
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      block = libc.malloc(size)
      ctypes.memset(block, 1, size)
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
      libc.free(block)
    print('pid', os.getpid(), 'tunables', os.environ.get('GLIBC_TUNABLES'), 'faults', faults)
''')


@pytest.mark.skipif(not hm._is_glibc(), reason='needs Linux with glibc')
@pytest.mark.parametrize('switch', ['1', '0'])
def test_restart_reuses_freed_memory(tmp_path, switch):
  script = tmp_path / 'child.py'
  script.write_text(_CHILD)
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env['DINET_MALLOC_TUNING'] = switch
  out = subprocess.run([sys.executable, str(script), '--flag', 'a b'], env=env, check=True,
                       capture_output=True, text=True, timeout=60).stdout.split('\n')
  starts = [line for line in out if line.startswith('start')]
  _, _, _, tunables, _, faults = next(l for l in out if l.startswith('pid')).split()
  if switch == '0':
    assert starts == ["start ['--flag', 'a b']"] and tunables == 'None'
    assert int(faults) >= 128  # 256 MiB mapped afresh: 4 KiB or at most 2 MiB a fault
  else:
    # Ran twice with the same arguments, the second time with the tunables; the second
    # block reuses the first's pages.
    assert starts == ["start ['--flag', 'a b']"] * 2
    assert tunables == ':'.join(hm.TUNABLES)
    assert int(faults) < 100
