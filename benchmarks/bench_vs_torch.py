"""DINet in JAX against the same DINet in PyTorch (benchmarks/torch_reference.py), one run.

    python benchmarks/bench_vs_torch.py            # all cases, 7 alternating turns
    python benchmarks/bench_vs_torch.py --quick    # 3 turns
    python benchmarks/bench_vs_torch.py --cases infer_240x320_b1,train_120x160_b4 --json

Both frameworks get the same random weights (converted with
``dinet_jax.convert.torch_dinet_to_flax``; the script first checks that the maps agree)
and the same inputs. Cases:

* ``infer_240x320_b1``, ``infer_240x320_b8``: inference. PyTorch in ``eval()`` and
  ``torch.inference_mode()``; JAX ``model.apply`` jitted, on CPU in chunks of at most
  two 240x320 images, batch 8 as two concurrent calls of four images
  (``dinet_jax.inference.streamed_apply``, the library's inference path; PyTorch gets no
  faster per image by chunking: its batch 8 beats its batch 1).
* ``train_240x320_b4``, ``train_120x160_b4``: one training step, forward + backward +
  Adam on the linear TVD loss with frozen BatchNorm. PyTorch eager (``zero_grad``,
  backward, ``Adam.step``); JAX ``jit(steps.train_step)`` with the state donated and
  the gradient norm on every 20th step only (``bench.GRAD_NORM_EVERY``, as ``train.py``
  logs it; PyTorch computes none).

PyTorch runs with ``torch.set_num_threads(os.cpu_count())``; for each case the warm-up
times both memory formats (NCHW and ``channels_last``) and the faster one is used (and
reported), so PyTorch is not handicapped. After compilation and warm-up the two
frameworks take turns, ``--reps`` times: a short pause (``--pause``: OpenMP and Eigen
worker threads spin for a while after a parallel region and would otherwise slow the
other framework's calls), then ``--turn`` back-to-back calls. The images/s figures are
medians of the steady state, every call of a turn but the first, as a loop over a
dataset or a training run sees it. The first call of each turn, right after the pause,
is reported separately ("after idle"): on this 2-core virtual machine XLA's worker
threads and cores wake slowly after 0.05 s or more of idleness, which costs JAX 5-8%
of a batch-1 inference call and PyTorch (whose OpenMP threads spin) about 1%.
``--turn 1`` gives the earlier protocol (one call after each pause). The table gives
the ratio JAX/PyTorch in images/s, the measured float32 matmul peak (the
better of ``jnp.dot`` and ``torch.mm`` on 4096x4096) and each figure's FLOP/s as a
fraction of it (FLOPs per image from XLA's cost analysis of the plain convolution
formulation, the same count for both frameworks), and the median CPU seconds each
framework's call spent in the kernel (page faults, memory compaction; JSON keys
``jax_kernel_s``, ``torch_kernel_s``). Run it on an otherwise idle machine:
other processes slow PyTorch's OpenMP threads more than XLA's.

Like the project's other commands, it restarts itself with glibc malloc set to reuse
freed memory (:mod:`dinet_jax.host_memory`; ``DINET_MALLOC_TUNING=0`` turns that off).
Both frameworks share the process and so the allocator setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

ALL_CASES = ('infer_240x320_b1', 'infer_240x320_b8', 'train_240x320_b4', 'train_120x160_b4')


def _load_reference():
  spec = importlib.util.spec_from_file_location(
      'torch_reference', pathlib.Path(__file__).with_name('torch_reference.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse_case(name: str) -> tuple[str, tuple[int, int], int]:
  kind, size, batch = name.split('_')
  h, w = size.split('x')
  return kind, (int(h), int(w)), int(batch.lstrip('b'))


def matmul_peak(n: int = 4096, reps: int = 3) -> dict[str, float]:
  """float32 matmul FLOP/s of jnp.dot and torch.mm (best of ``reps``)."""
  import torch

  from dinet_jax.bench import matmul_peak_flops, time_calls
  t = torch.randn(n, n)
  torch_t = min(time_calls(lambda: torch.mm(t, t), reps))
  return {'jax': matmul_peak_flops(n, reps), 'torch': 2 * n**3 / torch_t}


def steady_median(turns: list[list[float]]) -> float:
  """Median call time of the steady state: every call of a turn but its first (the
  first, after the pause, wakes idle worker threads and cores); all calls for turns of
  one call."""
  return float(np.median([t for turn in turns for t in (turn[1:] or turn)]))


class TorchCase:
  """A PyTorch case in the faster of the two memory formats."""

  def __init__(self, ref: Any, state_dict: dict, kind: str, hw: tuple[int, int], batch: int,
               x: np.ndarray, y: np.ndarray):
    import torch
    self.kind = kind
    self._runs = {}
    for fmt in ('nchw', 'channels_last'):
      net = ref.TorchDINet()
      net.load_state_dict(state_dict)
      xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
      yt = torch.from_numpy(y.transpose(0, 3, 1, 2).copy())
      if fmt == 'channels_last':
        net = net.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
      if kind == 'infer':
        net.eval()

        def run(net=net, xt=xt):
          with torch.inference_mode():
            net(xt)
      else:
        net.train()
        net.freeze_bn()
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)

        def run(net=net, xt=xt, yt=yt, opt=opt):
          opt.zero_grad(set_to_none=True)
          ref.tvd_loss(net(xt), yt).backward()
          opt.step()
      self._runs[fmt] = run

  def warm_up(self, reps: int = 2) -> str:
    """Times both formats, keeps the faster one and returns its name."""
    from dinet_jax.bench import time_calls
    times = {fmt: float(np.median(time_calls(run, reps, warmup=1)))
             for fmt, run in self._runs.items()}
    self.format = min(times, key=times.get)
    self.run = self._runs[self.format]
    self.warmup_times = times
    self._runs = {self.format: self.run}  # Frees the other copy of the model.
    return self.format


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--cases', default=','.join(ALL_CASES),
                      help=f'comma-separated, from {", ".join(ALL_CASES)} (any size/batch)')
  parser.add_argument('--reps', type=int, default=None, help='alternating repetitions')
  parser.add_argument('--quick', action='store_true', help='3 repetitions')
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='PyTorch intra-op threads (default: all cores)')
  parser.add_argument('--pause', type=float, default=0.25,
                      help="seconds of sleep before each framework's turn, so that the "
                           "other framework's spinning worker threads are idle (default "
                           '0.25)')
  parser.add_argument('--turn', type=int, default=3,
                      help='back-to-back calls per framework turn; the figures are '
                           'medians of calls 2.. of each turn (default 3; 1 times only '
                           'calls after a pause, as before)')
  parser.add_argument('--json', action='store_true', help='also print a JSON object')
  args = parser.parse_args(argv)
  reps = args.reps or (3 if args.quick else 7)

  import jax
  import jax.numpy as jnp
  import torch

  from dinet_jax import bench as jbench
  from dinet_jax import convert, host_memory
  from dinet_jax.models import DINet
  from dinet_jax.models.layers import resolve_conv_impl

  torch.set_num_threads(args.threads)
  ref = _load_reference()
  torch.manual_seed(0)
  net = ref.randomize(ref.TorchDINet(), 0).eval()
  state_dict = {k: v.clone() for k, v in net.state_dict().items()}
  variables = convert.torch_dinet_to_flax(state_dict)
  model = DINet()
  info = {'device': jbench.device_description(), 'jax': jax.__version__,
          'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
          'conv_impl': resolve_conv_impl(), 'reps': reps,
          'malloc_tuning': host_memory.malloc_tuning_active(),
          'load_average_before': os.getloadavg()}
  print(f'{info["device"]}; jax {jax.__version__} (convolutions: {info["conv_impl"]}), '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads); malloc tuning '
        f'{"on" if info["malloc_tuning"] else "off"}; '
        f'load average {info["load_average_before"][0]:.2f}', flush=True)

  # Same maps from both (random weights, a small input).
  xs = np.random.default_rng(0).standard_normal((1, 64, 96, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(xs.transpose(0, 3, 1, 2).copy())).numpy()
  got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(xs)))
  info['parity_max_abs_err'] = float(np.max(np.abs(got.transpose(0, 3, 1, 2) - expected)))
  print(f'parity: max |JAX - PyTorch| = {info["parity_max_abs_err"]:.2e}', flush=True)
  del net

  peak = matmul_peak()
  info['matmul_peak_flop_per_s'] = max(peak.values())
  info['matmul_flop_per_s'] = peak
  print(f'float32 matmul peak: {peak["jax"] / 1e9:.1f} GFLOP/s (jnp.dot), '
        f'{peak["torch"] / 1e9:.1f} GFLOP/s (torch.mm)', flush=True)

  cases = []
  for name in args.cases.split(','):
    kind, hw, batch = _parse_case(name)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *hw, 3)).astype(np.float32)
    y = rng.random((batch, *hw, 1)).astype(np.float32)
    build = jbench.inference_case if kind == 'infer' else jbench.train_case
    jcase = build(model, variables, hw, batch)
    print(f'{name}: compiling JAX ...', flush=True)
    jcase.setup()
    jax.block_until_ready(jcase.run())
    tcase = TorchCase(ref, state_dict, kind, hw, batch, x, y)
    fmt = tcase.warm_up()
    print(f'{name}: JAX compiled in {jcase.compile_s:.1f} s; PyTorch warm-up '
          + ', '.join(f'{k} {v * 1e3:.0f} ms' for k, v in tcase.warmup_times.items())
          + f' -> {fmt}', flush=True)
    cases.append((name, batch, jcase, tcase))

  # times[name][fw][rep][call]: each framework's turn is args.turn back-to-back calls
  # after a pause; call 0 is the call after idle, calls 1.. the steady state.
  times = {name: {'jax': [], 'torch': []} for name, *_ in cases}
  kernel = {name: {'jax': [], 'torch': []} for name, *_ in cases}
  for rep in range(reps):
    for name, _, jcase, tcase in cases:
      for fw, fn in (('jax', jcase.run), ('torch', tcase.run)):
        time.sleep(args.pause)
        turn, turn_kernel = [], []
        for _ in range(args.turn):
          k = jbench.rusage()[1]
          t = time.perf_counter()
          fn()
          turn.append(time.perf_counter() - t)
          turn_kernel.append(jbench.rusage()[1] - k)
        times[name][fw].append(turn)
        kernel[name][fw].append(turn_kernel)
    print(f'  repetition {rep + 1}/{reps} done', flush=True)
  info['load_average_after'] = os.getloadavg()

  results = {}
  for name, batch, jcase, tcase in cases:
    jm, tm = (steady_median(times[name][fw]) for fw in ('jax', 'torch'))
    jf, tf = (float(np.median([turn[0] for turn in times[name][fw]]))
              for fw in ('jax', 'torch'))
    flops = jcase.flops_per_image
    results[name] = {
        'jax_img_per_s': batch / jm, 'torch_img_per_s': batch / tm, 'ratio': tm / jm,
        'jax_first_img_per_s': batch / jf, 'torch_first_img_per_s': batch / tf,
        'first_ratio': tf / jf,
        'jax_median_s': jm, 'torch_median_s': tm, 'torch_format': tcase.format,
        'flops_per_img': flops, 'jax_peak_fraction': flops * batch / jm /
        info['matmul_peak_flop_per_s'], 'torch_peak_fraction': flops * batch / tm /
        info['matmul_peak_flop_per_s'], 'jax_compile_s': jcase.compile_s,
        'jax_times_s': [[round(t, 4) for t in turn] for turn in times[name]['jax']],
        'torch_times_s': [[round(t, 4) for t in turn] for turn in times[name]['torch']],
        'jax_kernel_s': float(np.median([k for t in kernel[name]['jax'] for k in t])),
        'torch_kernel_s': float(np.median([k for t in kernel[name]['torch'] for k in t])),
    }

  steady_calls = f'calls 2-{args.turn}' if args.turn > 1 else 'the one call'
  print(f'\nload average before/after: {info["load_average_before"][0]:.2f} / '
        f'{info["load_average_after"][0]:.2f}; {reps} alternating turns of {args.turn} '
        f'back-to-back calls; medians of {steady_calls} of each turn ("after idle": of '
        f'the first call, after the {args.pause} s pause)')
  print(f'{"case":<19}{"JAX img/s":>10}{"torch img/s":>12}{"JAX/torch":>10}'
        f'{"after idle":>11}{"GFLOP/img":>10}{"JAX %peak":>10}{"torch %peak":>12}'
        f'{"kernel s":>9}{"":6}  torch format')
  for name, r in results.items():
    print(f'{name:<19}{r["jax_img_per_s"]:>10.2f}{r["torch_img_per_s"]:>12.2f}'
          f'{r["ratio"]:>9.2f}x{r["first_ratio"]:>10.2f}x{r["flops_per_img"] / 1e9:>10.1f}'
          f'{r["jax_peak_fraction"]:>10.0%}{r["torch_peak_fraction"]:>12.0%}'
          f'{r["jax_kernel_s"]:>9.2f}/{r["torch_kernel_s"]:<5.2f}  {r["torch_format"]}')
  if args.json:
    print(json.dumps({'info': info, 'results': results}, indent=1))
  return 0


if __name__ == '__main__':
  from dinet_jax import host_memory
  host_memory.restart_with_malloc_tuning()
  sys.exit(main())
