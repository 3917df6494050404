"""Where DINet's inference time goes, stage by stage, in JAX and in PyTorch, one run.

    python benchmarks/bench_stages.py                        # 240x320, batch 1
    python benchmarks/bench_stages.py --batch 2 --reps 7     # one CPU inference chunk

Both frameworks run truncated copies of the same randomly initialised DINet (converted
with ``dinet_jax.convert.torch_dinet_to_flax``): the stem (conv1, BatchNorm, ReLU, max
pool), then up to layer1, ..., layer4, then with the context module, then the whole
network (decoder and bilinear upsampling). A stage's time is the difference between
consecutive truncations, so it includes whatever the truncation changes in the
compiled program around it. JAX runs each truncation under ``jit`` as one call (also
for batches that the library's inference path would split into concurrent calls, see
``dinet_jax.inference.apply_in_streams``) with the Winograd kernel transforms computed
beforehand (``inference.prepare_variables``); PyTorch runs in ``eval()`` and
``torch.inference_mode()``, in ``--memory-format`` (default ``channels_last``, the
faster one for inference in ``bench_vs_torch``).

The frameworks take turns as in ``bench_vs_torch``: a pause, then back-to-back calls,
of which the figures are medians. As the short truncations take 3-20 ms, each turn
first calls for ``--settle`` seconds untimed: XLA's worker threads and this VM's cores
need a few hundred milliseconds of work after an idle pause to reach full speed, which
a turn of a few short calls would not give them (the stem and layer1 then measured
40-50% slower for JAX). Before timing, the script checks that every truncation's output
agrees between the frameworks.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from dinet_jax.bench import time_calls  # noqa: E402  (after the path set-up)

STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4', 'context', 'dinet')


def _sub_variables(variables: dict, name: str) -> dict:
  """The variables of the submodule ``name`` in every collection that has it."""
  return {col: tree[name] for col, tree in variables.items() if name in tree}


def jax_truncations(model: Any, variables: dict) -> dict[str, Callable]:
  """NHWC images -> each truncation's output, unjitted; for the default ``DINet``."""
  backbone = model.backbone.clone(return_stages=True)
  backbone_vars = _sub_variables(variables, 'backbone')
  context_vars = _sub_variables(variables, 'context')

  def upto(stage):
    return lambda x: backbone.apply(backbone_vars, x)[stage]

  out = {stage: upto(stage) for stage in STAGES[:5]}
  out['context'] = lambda x: model.context.apply(context_vars, upto('layer4')(x))
  out['dinet'] = lambda x: model.apply(variables, x)
  return out


def torch_truncations(net: Any) -> dict[str, Callable]:
  """NCHW tensors -> each truncation's output for a ``torch_reference.TorchDINet``."""
  b = net.backbone
  parts = {'stem': lambda x: b.maxpool(b.relu(b.bn1(b.conv1(x))))}
  for i, stage in enumerate(STAGES[1:5]):
    layer = getattr(b, stage)
    parts[stage] = lambda x, layer=layer, prev=STAGES[i]: layer(parts[prev](x))
  parts['context'] = lambda x: net.context(parts['layer4'](x))
  parts['dinet'] = net
  return parts


def truncation_errors(jax_fns: dict[str, Callable], torch_fns: dict[str, Callable],
                      images: np.ndarray) -> dict[str, tuple[float, tuple[int, ...]]]:
  """Per truncation: max |JAX - PyTorch| / max(1, max |PyTorch|) on NHWC ``images``, and
  the NHWC output shape (JAX's; PyTorch's must be the same)."""
  import jax
  import torch

  out = {}
  with torch.inference_mode():
    for s in STAGES:
      got = np.asarray(jax.jit(jax_fns[s])(images))
      expected = torch_fns[s](torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
      expected = expected.permute(0, 2, 3, 1).numpy()
      if got.shape != expected.shape:
        raise ValueError(f'{s}: JAX shape {got.shape}, PyTorch shape {expected.shape}')
      scale = max(1.0, float(np.max(np.abs(expected))))
      out[s] = (float(np.max(np.abs(got - expected))) / scale, got.shape)
  return out


def _turn(fn: Callable[[], Any], turn: int, pause: float, settle: float) -> list[float]:
  """A pause, untimed calls for ``settle`` seconds, then ``turn`` timed calls."""
  time.sleep(pause)
  end = time.perf_counter() + settle
  while time.perf_counter() < end:
    fn()
  return time_calls(fn, turn, warmup=0)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size', default='240x320', help='HxW (default 240x320)')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--reps', type=int, default=5, help='alternating turns')
  parser.add_argument('--turn', type=int, default=3, help='back-to-back calls per turn')
  parser.add_argument('--pause', type=float, default=0.25)
  parser.add_argument('--settle', type=float, default=0.5,
                      help='seconds of untimed calls after each pause (default 0.5)')
  parser.add_argument('--memory-format', default='channels_last',
                      choices=('channels_last', 'nchw'))
  parser.add_argument('--threads', type=int, default=os.cpu_count(),
                      help='PyTorch intra-op threads (default: all cores)')
  args = parser.parse_args(argv)
  h, w = (int(v) for v in args.size.split('x'))

  import jax
  import jax.numpy as jnp
  import torch

  from dinet_jax import convert, inference
  from dinet_jax.bench import device_description
  from dinet_jax.models import DINet

  from bench_vs_torch import _load_reference  # benchmarks/ is sys.path[0]

  ref = _load_reference()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  net = ref.randomize(ref.TorchDINet(), 0).eval()
  model = DINet()
  variables = convert.torch_dinet_to_flax(net.state_dict())
  print(f'{device_description()}; jax {jax.__version__}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads, {args.memory_format}); {args.batch}x{h}x{w}',
        flush=True)

  # Each truncation agrees between the frameworks (plain variables, a small input).
  small = np.random.default_rng(0).standard_normal((1, 64, 96, 3)).astype(np.float32)
  errs = {s: e for s, (e, _) in truncation_errors(
      jax_truncations(model, variables), torch_truncations(net), small).items()}
  print('max |JAX - PyTorch| / max(1, max |PyTorch|) per truncation: '
        + ', '.join(f'{s} {e:.1e}' for s, e in errs.items()), flush=True)
  if max(errs.values()) > 1e-4:
    raise SystemExit('the truncations disagree; the timings would compare different work')

  prepared = inference.prepare_variables(model, variables, (h, w), args.batch)
  jt = jax_truncations(model, prepared)
  x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, h, w, 3), jnp.float32)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  if args.memory_format == 'channels_last':
    net = net.to(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
  tt = torch_truncations(net)
  runs = {}
  for s in STAGES:
    f = jax.jit(jt[s])
    f(x).block_until_ready()

    def run_torch(fn=tt[s]):
      with torch.inference_mode():
        fn(xt)

    runs[s] = {'jax': lambda f=f: f(x).block_until_ready(), 'torch': run_torch}
    for fn in runs[s].values():
      fn()
  print(f'compiled {len(STAGES)} truncations; timing {args.reps} turns of {args.turn} '
        f'calls each, after {args.settle} s of untimed calls', flush=True)

  times = {s: {'jax': [], 'torch': []} for s in STAGES}
  for _ in range(args.reps):
    for s in STAGES:
      for fw, fn in runs[s].items():
        times[s][fw] += _turn(fn, args.turn, args.pause, args.settle)
  cumulative = {s: {fw: float(np.median(t)) for fw, t in times[s].items()} for s in STAGES}

  print(f'\n{"stage":<10}{"JAX ms":>9}{"torch ms":>10}{"JAX - torch":>13}   '
        '(differences of consecutive truncations, per call)')
  previous = {'jax': 0.0, 'torch': 0.0}
  for s in STAGES:
    part = {fw: cumulative[s][fw] - previous[fw] for fw in previous}
    name = 'decoder' if s == 'dinet' else s
    print(f'{name:<10}{part["jax"] * 1e3:>9.1f}{part["torch"] * 1e3:>10.1f}'
          f'{(part["jax"] - part["torch"]) * 1e3:>+13.1f}')
    previous = cumulative[s]
  print(f'{"whole":<10}{previous["jax"] * 1e3:>9.1f}{previous["torch"] * 1e3:>10.1f}'
        f'{(previous["jax"] - previous["torch"]) * 1e3:>+13.1f}   '
        f'JAX/PyTorch images/s {previous["torch"] / previous["jax"]:.2f}x')
  return 0


if __name__ == '__main__':
  from dinet_jax import host_memory
  host_memory.restart_with_malloc_tuning()
  sys.exit(main())
