"""Batched inference in chunks: on CPU a batch runs a few images at a time.

On a CPU the Winograd transforms and the elementwise passes between convolutions are
bound by memory traffic. For one or two 240x320 images their buffers (10 MB for a
layer-4 convolution) stay in the 32 MB L3 cache; for eight they do not, and DINet ran
at 3.17 img/s at batch 8 against 3.48 img/s for the same batch as four chunks of two
(in-process alternating, 5 repetitions, `GLIBC_TUNABLES` as set by
:mod:`dinet_jax.host_memory`). :func:`apply_in_chunks` runs the chunks one after the
other inside the jitted function (``lax.map``); :func:`chunk_size` picks at most
:data:`CPU_CHUNK_PIXELS` pixels per chunk on CPU, the whole batch on accelerators.

A batch of several images also runs as concurrent calls (:func:`apply_in_streams`, from
host threads, :func:`stream_count` of them). One call gains 1.76x from a second core
where PyTorch gains 1.89x (batch 1: 402-408 ms on one core, 229 ms on two); most likely
XLA's workers wait at the ends of operations split across the cores, and a second call
in flight fills those waits (each call holds its own temporary buffers meanwhile).
Batch 8 at 240x320 ran at 210-211 ms per image as two concurrent calls of four images
against 225-226 ms as one call, batch 2 at 207 against 221 ms as two calls of one image
(Intel Xeon, 2 cores, 4-6 turns of 3 calls). Two calls queued from one thread run one
after the other; so did two independent halves inside one program (445 against 440 ms
for two images).
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from dinet_jax.models import layers

# Two 240x320 images: the fastest chunk measured at 240x320 (batch 8 as 8x1: 3.37 img/s,
# 4x2: 3.48, 1x8: 3.17). At 480x640 that is one image, also the fastest measured
# (batch 4 as 4x1: 0.88 img/s, 2x2: 0.86, 1x4: 0.82). Both on a 2-core AMD EPYC (32 MB
# L3); on a 2-core Intel Xeon (AVX-512), batch 8 at 240x320 as 8x1: 4.35 img/s, 4x2:
# 4.36, 2x4: 4.18, 1x8: 3.89.
CPU_CHUNK_PIXELS = 2 * 240 * 320


def chunk_size(shape: Sequence[int], backend: str | None = None) -> int:
  """Images per chunk for an (N, H, W, C) batch on ``backend`` (default: JAX's)."""
  n, h, w = shape[:3]
  if (backend or jax.default_backend()) != 'cpu':
    return n
  return max(1, min(n, CPU_CHUNK_PIXELS // (h * w)))


# Concurrent calls per batch on CPU (see the module docstring); measured on 2 cores.
CPU_STREAMS = 2


def stream_count(shape: Sequence[int], backend: str | None = None) -> int:
  """Concurrent calls for an (N, H, W, C) batch on ``backend`` (default: JAX's): on CPU
  one per image, at most :data:`CPU_STREAMS` and the core count; one on accelerators."""
  if (backend or jax.default_backend()) != 'cpu':
    return 1
  return max(1, min(shape[0], CPU_STREAMS, _cpu_cores()))


def _cpu_cores() -> int:
  """The cores this process may run on (its affinity mask, where the OS has one)."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def apply_in_streams(fn: Callable[[Any], Any], images: Any, streams: int,
                     chunk: int = 1) -> Any:
  """``fn(images)`` as ``streams`` concurrent calls, each from its own host thread, on
  consecutive parts of the batch, concatenated (as JAX arrays) along axis 0.

  Each part is a number of whole chunks of ``chunk`` images, or of single images where
  the batch has fewer chunks than ``streams``. The first parts take the extra chunks and
  the last part any remainder, so a batch's leading parts all have one shape (two
  streams, chunk 2: batch 8 as 4 + 4, batch 5 as 4 + 1, batch 2 as 1 + 1). ``fn`` maps
  a batch to arrays (or a pytree of arrays) with the batch as first axis and must be
  safe to call from several threads at once, as a jitted function is; each part's call
  is waited for in its thread, so the calls overlap on the device, and each holds its
  own temporary buffers meanwhile. With ``streams == 1``, a single image, or ``images``
  traced by a JAX transformation (inside ``jit``), this is ``fn(images)``.
  """
  if streams < 1 or chunk < 1:
    raise ValueError(f'streams and chunk must be at least 1, got {streams} and {chunk}')
  n = images.shape[0]
  if -(-n // chunk) < streams:
    chunk = 1
  chunks = -(-n // chunk)
  if streams == 1 or chunks == 1 or isinstance(images, jax.core.Tracer):
    return fn(images)
  parts = min(streams, chunks)
  per_part, extra = divmod(chunks, parts)
  bounds, start = [], 0
  for i in range(parts):
    stop = min(n, start + (per_part + (i < extra)) * chunk)
    bounds.append((start, stop))
    start = stop

  def call(bound):
    return jax.block_until_ready(fn(images[bound[0]:bound[1]]))

  with concurrent.futures.ThreadPoolExecutor(parts) as pool:
    results = list(pool.map(call, bounds))
  return jax.tree.map(lambda *a: jnp.concatenate(a), *results)


def apply_in_chunks(fn: Callable[[jnp.ndarray], Any], images: jnp.ndarray,
                    chunk: int) -> Any:
  """``fn(images)`` computed ``chunk`` images at a time and concatenated along axis 0.

  ``fn`` maps a batch to arrays (or a pytree of arrays) with the batch as first axis. It
  is traced for the chunk shape and, when ``chunk`` does not divide the batch, for the
  remainder. Under ``jit`` the chunks run one after the other (``lax.map``), so only one
  chunk's temporaries are live at a time.
  """
  n = images.shape[0]
  if chunk < 1:
    raise ValueError(f'chunk must be at least 1, got {chunk}')
  if chunk >= n:
    return fn(images)
  full = n // chunk * chunk
  out = jax.lax.map(fn, images[:full].reshape(n // chunk, chunk, *images.shape[1:]))
  out = jax.tree.map(lambda o: o.reshape(full, *o.shape[2:]), out)
  if full < n:
    out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, fn(images[full:]))
  return out


def apply_model(model: Any, variables: Any, images: jnp.ndarray,
                chunk: int | None = None) -> Any:
  """``model.apply(variables, images)`` in chunks of ``chunk`` images (default:
  :func:`chunk_size`). Jit it at the call site."""
  chunk = chunk_size(images.shape) if chunk is None else chunk
  return apply_in_chunks(lambda x: model.apply(variables, x), images, chunk)


def streamed_apply(model: Any,
                   output: Callable[[Any], Any] = lambda maps: maps) -> Callable[[Any, Any], Any]:
  """The library's inference path, ``(variables, images) -> output(maps)``:
  :func:`apply_model` jitted and called in :func:`stream_count` concurrent parts of the
  batch (:func:`apply_in_streams`). Put the variables on the device first
  (``jax.device_put``); numpy variables would be copied on every call. Inside ``jit`` it
  is one chunked call."""
  apply = jax.jit(lambda v, x: output(apply_model(model, v, x)))

  def run(variables: Any, images: Any) -> Any:
    return apply_in_streams(lambda x: apply(variables, x), images,
                            stream_count(images.shape), chunk_size(images.shape))

  return run


def prepare_variables(model: Any, variables: Any, image_size: Sequence[int],
                      batch: int | None = None) -> dict[str, Any]:
  """``variables`` plus the Winograd transforms of the model's 3x3 kernels (collection
  ``'winograd'``, see :class:`dinet_jax.models.layers.Conv2d`), for :func:`apply_model`
  on (batch, H, W, 3) images of ``image_size`` (H, W); ``batch`` defaults to one CPU
  chunk.

  :func:`apply_model` then uses the stored transforms instead of transforming the kernels
  on every call (2-3% faster at 240x320 on a 2-core CPU); each convolution keeps the
  tile chosen here for every input size. The maps are those of the plain variables up to
  float32 rounding. For inference only: the stored transforms are constants, so
  gradients with respect to the kernels they replace are zero. They take 1.8-2.7 times the
  memory of the 3x3 kernels they replace; recompute them after the kernels change. Where
  the convolutions do not run as matmuls (accelerators) the variables are returned
  unchanged.
  """
  variables = {k: v for k, v in dict(variables).items() if k != layers.WINOGRAD_COLLECTION}
  if layers.resolve_conv_impl() != 'matmul':
    return variables
  h, w = image_size
  chunk = chunk_size((batch, h, w)) if batch else max(1, CPU_CHUNK_PIXELS // (h * w))
  x = jnp.zeros((chunk, h, w, 3), jnp.float32)
  # Only the transforms are returned: XLA drops the rest of the forward pass.
  prepared = jax.jit(
      lambda v, x: model.apply(v, x, mutable=[layers.WINOGRAD_COLLECTION])[1])(variables, x)
  if prepared.get(layers.WINOGRAD_COLLECTION):
    variables[layers.WINOGRAD_COLLECTION] = prepared[layers.WINOGRAD_COLLECTION]
  return variables
