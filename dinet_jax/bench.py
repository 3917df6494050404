"""Speed benchmark: inference and training images per second of DINet on this machine.

    python -m dinet_jax.bench                 # the full set (minutes on a 2-core CPU)
    python -m dinet_jax.bench --quick         # 240x320 only, few repetitions
    python -m dinet_jax.bench --sizes 240x320,480x640 --batch 1,8 --train-batch 4 --json

Measures, after compilation and warm-up, the median of several timed calls of

* inference (``model.apply``, jitted, on CPU in chunks of at most two 240x320 images:
  :mod:`dinet_jax.inference`) at each ``--sizes`` for each ``--batch``,
* one training step (forward + backward + Adam, linear TVD loss, frozen BatchNorm,
  donated state; the gradient norm computed every ``GRAD_NORM_EVERY`` steps, as
  ``train.py`` does for its logging steps) at ``--train-sizes`` with ``--train-batch``,

in float32 and, where the device computes it natively (GPU/TPU), bfloat16. Prints the
device, the compile time, FLOPs per image (XLA's cost analysis of the plain
convolution formulation; padding products are not counted) and the achieved FLOP/s;
on CPU also the measured float32 matmul peak and each figure as a fraction of it.
``--json`` prints one JSON object with keys such as ``infer_img_per_s_240x320_b1``,
``train_img_per_s_240x320_b4``, ``infer_compile_s_240x320_b1`` and
``flops_per_img_infer_240x320``. Random weights: speed does not depend on them.
Run as a command it first restarts itself with glibc malloc set to reuse freed memory
(:mod:`dinet_jax.host_memory`; ``DINET_MALLOC_TUNING=0`` measures without).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

PAPER_SECONDS_PER_IMAGE = {'240x320': 0.02, '480x640': 0.06}  # GTX 1080 Ti, DINet paper
GRAD_NORM_EVERY = 20  # configs/default.py's log_every_steps (steps.train_step)


def time_calls(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
  """Wall-clock seconds of ``reps`` calls of ``fn`` (which must block) after ``warmup``."""
  for _ in range(warmup):
    fn()
  out = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
  """Measured float32 matmul FLOP/s of the default JAX device (best of ``reps``)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  return 2 * n**3 / min(time_calls(lambda: f(a, b).block_until_ready(), reps))


def _flops(compiled_or_lowered: Any) -> float:
  cost = compiled_or_lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def device_description() -> str:
  import jax
  d = jax.devices()[0]
  kind = getattr(d, 'device_kind', d.platform)
  if d.platform == 'cpu':
    import os
    kind = f'{_cpu_model()} ({os.cpu_count()} cores)'
  return f'{d.platform}: {kind} x{jax.device_count()}'


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform
  return platform.processor() or 'CPU'


class Case:
  """One benchmark case: a call into jitted code with fixed arguments, compiled (and
  called once) on ``setup``."""

  def __init__(self, name: str, images_per_call: int, build: Callable[[], tuple]):
    self.name, self.images_per_call, self._build = name, images_per_call, build
    self.compile_s = float('nan')
    self.flops_per_image = float('nan')

  def setup(self) -> None:
    t = time.perf_counter()
    self.run, self.flops_per_image = self._build()
    self.run()  # compile + first call
    self.compile_s = time.perf_counter() - t


def inference_case(model: Any, variables: Any, hw: tuple[int, int], batch: int,
                   flops_model: Any = None) -> Case:
  """``model.apply`` on a (batch, H, W, 3) batch as the library's inference runs it: in
  chunks, on CPU as concurrent calls (:func:`dinet_jax.inference.streamed_apply`), with
  the Winograd kernel transforms computed once beforehand
  (:func:`dinet_jax.inference.prepare_variables`)."""
  import jax
  import jax.numpy as jnp

  from dinet_jax import inference

  def build():
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *hw, 3), jnp.float32)
    f = inference.streamed_apply(model)
    v = jax.device_put(variables)  # Not numpy arrays: no copy to the device per call.
    flops = _plain_flops(lambda v, x: (flops_model or model).apply(v, x), v, x)
    v = inference.prepare_variables(model, v, hw, batch)
    return (lambda: jax.block_until_ready(f(v, x))), flops / batch

  return Case(f'infer_{hw[0]}x{hw[1]}_b{batch}', batch, build)


def train_case(model: Any, variables: Any, hw: tuple[int, int], batch: int,
               flops_model: Any = None) -> Case:
  """One ``steps.train_step`` (Adam, linear TVD, frozen BatchNorm, donated state)."""
  import jax
  import jax.numpy as jnp
  import optax

  from dinet_jax import steps
  from dinet_jax.losses import get_loss

  def build():
    loss_fn = get_loss('linear_tvd')  # the paper's loss
    tx = optax.adam(1e-5)
    batch_data = {
        'image': jax.random.normal(jax.random.PRNGKey(1), (batch, *hw, 3), jnp.float32),
        'saliency': jax.random.uniform(jax.random.PRNGKey(2), (batch, *hw, 1), jnp.float32),
    }
    fresh = jax.tree.map(jnp.array, variables)  # Donation must not delete the caller's.
    holder = [steps.create_train_state(model, fresh, tx)]
    step = jax.jit(lambda s, b: steps.train_step(s, b, loss_fn=loss_fn,
                                                  grad_norm_every=GRAD_NORM_EVERY),
                   donate_argnums=0)

    def run():
      holder[0], metrics = step(holder[0], batch_data)
      jax.block_until_ready(metrics)

    plain = jax.eval_shape(
        lambda v: steps.create_train_state(flops_model or model, v, tx), variables)
    flops = _plain_flops(lambda s, b: steps.train_step(s, b, loss_fn=loss_fn), plain,
                         batch_data)
    return run, flops / batch

  return Case(f'train_{hw[0]}x{hw[1]}_b{batch}', batch, build)


def _plain_flops(fn: Callable, *args: Any) -> float:
  """FLOPs of ``fn`` with XLA's own convolutions (cost analysis of the lowered HLO,
  which counts a convolution's products with real input, not padding)."""
  import jax

  from dinet_jax.models.layers import use_conv_impl
  with use_conv_impl('xla'):
    return _flops(jax.jit(fn).trace(*args).lower())


def rusage() -> tuple[int, float]:
  """Minor page faults and kernel CPU seconds of the process so far; (0, 0.0) off Unix.
  See :mod:`dinet_jax.host_memory` for why they matter."""
  try:
    import resource
  except ImportError:
    return 0, 0.0
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_minflt, usage.ru_stime


def run_cases(cases: Sequence[Case], reps: int, log: Callable[[str], None]) -> dict:
  results = {}
  for case in cases:
    log(f'  compiling {case.name} ...')
    case.setup()
    case.run()  # warm-up
    faults0, kernel0 = rusage()
    times = time_calls(case.run, reps, warmup=0)
    faults1, kernel1 = rusage()
    faults, kernel_s = round((faults1 - faults0) / reps), (kernel1 - kernel0) / reps
    med = float(np.median(times))
    results[case.name] = {
        'img_per_s': case.images_per_call / med, 'median_s': med,
        'times_s': [round(t, 5) for t in times], 'compile_s': case.compile_s,
        'flops_per_img': case.flops_per_image,
        'flop_per_s': case.flops_per_image * case.images_per_call / med,
        'page_faults_per_call': faults, 'kernel_s_per_call': kernel_s,
    }
    log(f'  {case.name}: {case.images_per_call / med:.2f} img/s '
        f'(median {med * 1e3:.1f} ms of {reps}; compile {case.compile_s:.1f} s; '
        f'per call {faults} page faults, {kernel_s:.2f} s in the kernel)')
  return results


def _parse_sizes(text: str) -> list[tuple[int, int]]:
  out = []
  for item in text.split(','):
    h, w = item.lower().split('x')
    out.append((int(h), int(w)))
  return out


def _parse_ints(text: str) -> list[int]:
  return [int(t) for t in text.split(',') if t]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m dinet_jax.bench',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--sizes', default='240x320,320x480,480x640',
                      help='inference sizes HxW, comma-separated')
  parser.add_argument('--batch', default=None,
                      help='inference batch sizes (default 1,8 on CPU, 1,32 elsewhere)')
  parser.add_argument('--train-sizes', default='240x320', help='training sizes HxW')
  parser.add_argument('--train-batch', type=int, default=None,
                      help='training batch (default 4 on CPU, 16 elsewhere)')
  parser.add_argument('--dtypes', default=None,
                      help='float32,bfloat16 (default: bfloat16 too on GPU/TPU only)')
  parser.add_argument('--reps', type=int, default=None, help='timed calls per case')
  parser.add_argument('--quick', action='store_true',
                      help='240x320 only, inference batch 1 and training, 3 repetitions')
  parser.add_argument('--no-train', action='store_true', help='inference only')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)

  import jax

  from dinet_jax import host_memory
  from dinet_jax.models import create_model
  from dinet_jax.models.layers import resolve_conv_impl

  platform = jax.devices()[0].platform
  on_cpu = platform == 'cpu'
  if args.quick:
    sizes, batches, train_sizes = [(240, 320)], [1], [(240, 320)]
    reps = args.reps or 3
  else:
    sizes = _parse_sizes(args.sizes)
    batches = _parse_ints(args.batch) if args.batch else ([1, 8] if on_cpu else [1, 32])
    train_sizes = _parse_sizes(args.train_sizes)
    reps = args.reps or 5
  if args.batch and args.quick:
    batches = _parse_ints(args.batch)
  train_batch = args.train_batch or (4 if on_cpu else 16)
  dtypes = args.dtypes.split(',') if args.dtypes else (
      ['float32'] if on_cpu else ['float32', 'bfloat16'])
  log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (
      lambda m: print(m, flush=True))

  out: dict[str, Any] = {
      'device': device_description(), 'jax_version': jax.__version__,
      'conv_impl': resolve_conv_impl(), 'reps': reps,
  }
  out['malloc_tuning'] = host_memory.malloc_tuning_active()
  log(f'Device: {out["device"]}, jax {jax.__version__}, convolutions: {out["conv_impl"]}, '
      f'malloc tuning: {"on" if out["malloc_tuning"] else "off"}')
  if on_cpu:
    peak = matmul_peak_flops()
    out['matmul_peak_flop_per_s'] = peak
    log(f'Measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s')

  variables_for: dict[tuple, Any] = {}
  for dtype in dtypes:
    model = create_model({'dtype': dtype})
    plain = create_model({'dtype': 'float32'})
    cases = []
    for hw in sizes:
      for b in batches:
        cases.append(inference_case(model, _variables(plain, variables_for), hw, b, plain))
    if not args.no_train:
      for hw in train_sizes:
        cases.append(train_case(model, _variables(plain, variables_for), hw, train_batch,
                                plain))
    log(f'{dtype}:')
    results = run_cases(cases, reps, log)
    suffix = '' if dtype == 'float32' else f'_{dtype}'
    for name, r in results.items():
      kind, rest = name.split('_', 1)
      out[f'{kind}_img_per_s_{rest}{suffix}'] = r['img_per_s']
      out[f'{kind}_s_per_img_{rest}{suffix}'] = 1.0 / r['img_per_s']
      out[f'{kind}_compile_s_{rest}{suffix}'] = r['compile_s']
      out[f'{kind}_flop_per_s_{rest}{suffix}'] = r['flop_per_s']
      out[f'{kind}_page_faults_per_call_{rest}{suffix}'] = r['page_faults_per_call']
      out[f'{kind}_kernel_s_per_call_{rest}{suffix}'] = r['kernel_s_per_call']
      size = rest.rsplit('_b', 1)[0]
      out[f'flops_per_img_{kind}_{size}'] = r['flops_per_img']
      if on_cpu:
        out[f'{kind}_peak_fraction_{rest}{suffix}'] = r['flop_per_s'] / out[
            'matmul_peak_flop_per_s']

  if not args.json:
    _print_table(out, dtypes)
  else:
    print(json.dumps(out, indent=1, sort_keys=True))
  return 0


def _variables(model: Any, cache: dict) -> Any:
  """Random variables (shared by every size: the model is fully convolutional)."""
  import jax
  import jax.numpy as jnp
  if 'v' not in cache:
    cache['v'] = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return cache['v']


def _print_table(out: dict, dtypes: Sequence[str]) -> None:
  peak = out.get('matmul_peak_flop_per_s')
  print()
  header = f'{"case":<28}{"img/s":>9}{"s/img":>9}{"GFLOP/img":>11}{"GFLOP/s":>10}'
  header += f'{"of peak":>9}' if peak else ''
  header += f'{"compile s":>11}{"paper s/img":>13}'
  print(header)
  for key in sorted(k for k in out if k.startswith(('infer_img_per_s', 'train_img_per_s'))):
    kind = key.split('_', 1)[0]
    rest = key[len(f'{kind}_img_per_s_'):]
    size = rest.split('_b', 1)[0]
    ips = out[key]
    flops = out.get(f'flops_per_img_{kind}_{size}', float('nan'))
    row = f'{kind + " " + rest:<28}{ips:>9.2f}{1 / ips:>9.3f}{flops / 1e9:>11.2f}'
    row += f'{out[f"{kind}_flop_per_s_{rest}"] / 1e9:>10.1f}'
    if peak:
      row += f'{out[f"{kind}_peak_fraction_{rest}"]:>9.0%}'
    paper = PAPER_SECONDS_PER_IMAGE.get(size) if kind == 'infer' else None
    row += f'{out[f"{kind}_compile_s_{rest}"]:>11.1f}'
    row += f'{paper:>13.2f}' if paper else f'{"":>13}'
    print(row)


if __name__ == '__main__':
  from dinet_jax import host_memory
  host_memory.restart_with_malloc_tuning()
  sys.exit(main())
