"""Chunked batched inference (dinet_jax.inference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinet_jax import inference
from dinet_jax.models import create_model


def test_chunk_size_rule():
  assert inference.chunk_size((8, 240, 320, 3), 'cpu') == 2
  assert inference.chunk_size((8, 480, 640, 3), 'cpu') == 1
  assert inference.chunk_size((8, 120, 160, 3), 'cpu') == 8
  assert inference.chunk_size((1, 240, 320, 3), 'cpu') == 1
  assert inference.chunk_size((32, 240, 320, 3), 'gpu') == 32


@pytest.mark.parametrize('n, chunk', [(6, 2), (5, 2), (3, 1), (4, 4), (2, 8)])
def test_chunks_concatenate_to_the_whole_batch(n, chunk):
  traced = []

  def fn(x):  # a pytree out, with a per-image result that differs from image to image
    traced.append(x.shape[0])
    return {'sum': x.sum(axis=(1, 2)), 'x2': x * 2.0}

  x = jax.random.normal(jax.random.PRNGKey(0), (n, 3, 4, 2))
  got = jax.jit(lambda x: inference.apply_in_chunks(fn, x, chunk))(x)
  np.testing.assert_allclose(got['sum'], x.sum(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(got['x2'], x * 2.0)
  # Traced for the chunk, plus once for a remainder; never for the whole batch.
  expected = {min(chunk, n)} | ({n % chunk} if n > chunk and n % chunk else set())
  assert set(traced) == expected


def test_bad_chunk():
  with pytest.raises(ValueError, match='chunk must be at least 1, got 0'):
    inference.apply_in_chunks(lambda x: x, jnp.zeros((2, 1)), 0)


def test_stream_count_rule(monkeypatch):
  monkeypatch.setattr(inference, '_cpu_cores', lambda: 2)
  assert inference.stream_count((8, 240, 320, 3), 'cpu') == 2
  assert inference.stream_count((3, 240, 320, 3), 'cpu') == 2
  assert inference.stream_count((2, 240, 320, 3), 'cpu') == 2
  assert inference.stream_count((2, 480, 640, 3), 'cpu') == 2
  assert inference.stream_count((1, 240, 320, 3), 'cpu') == 1
  assert inference.stream_count((8, 120, 160, 3), 'cpu') == 2
  assert inference.stream_count((8, 240, 320, 3), 'gpu') == 1
  monkeypatch.setattr(inference, '_cpu_cores', lambda: 1)
  assert inference.stream_count((8, 240, 320, 3), 'cpu') == 1


@pytest.mark.parametrize('n, streams, chunk, parts', [
    (8, 2, 2, [4, 4]), (6, 2, 2, [4, 2]), (5, 2, 2, [4, 1]), (3, 2, 1, [2, 1]),
    (7, 3, 1, [3, 2, 2]), (2, 4, 1, [1, 1]), (4, 1, 1, [4]), (1, 2, 1, [1]),
    # Fewer chunks than streams: parts of single images.
    (2, 2, 2, [1, 1]), (4, 2, 4, [2, 2]), (3, 2, 8, [2, 1])])
def test_streams_concatenate_to_the_whole_batch(n, streams, chunk, parts):
  seen = []

  def fn(x):
    seen.append(x.shape[0])
    return {'sum': jnp.sum(x, axis=(1, 2)), 'x2': jnp.asarray(x) * 2.0}

  x = np.random.default_rng(0).standard_normal((n, 3, 4, 2)).astype(np.float32)
  got = inference.apply_in_streams(fn, x, streams, chunk)
  np.testing.assert_allclose(got['sum'], x.sum(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(got['x2'], x * 2.0)
  assert sorted(seen, reverse=True) == parts


def test_streams_run_concurrently():
  """Each part's call runs in its own thread while the others are in flight: the calls
  meet at a barrier, which calls made one after the other never pass."""
  import threading
  barrier = threading.Barrier(3, timeout=10)

  def fn(x):
    barrier.wait()
    return x

  x = np.arange(6, dtype=np.float32)[:, None]
  np.testing.assert_array_equal(inference.apply_in_streams(fn, x, 3, 2), x)


def test_bad_streams():
  with pytest.raises(ValueError, match='streams and chunk must be at least 1, got 0 and 1'):
    inference.apply_in_streams(lambda x: x, np.zeros((2, 1)), 0)
  with pytest.raises(ValueError, match='streams and chunk must be at least 1, got 2 and 0'):
    inference.apply_in_streams(lambda x: x, np.zeros((2, 1)), 2, 0)


def test_an_error_in_one_stream_reaches_the_caller():
  def fn(x):
    if x[0, 0] > 0:
      raise ValueError(f'bad part starting with {x[0, 0]}')
    return x

  x = np.arange(4, dtype=np.float32)[:, None]
  with pytest.raises(ValueError, match='bad part starting with 2.0'):
    inference.apply_in_streams(fn, x, 2, 2)


def test_streams_inside_jit_are_one_call():
  """Traced images cannot be sliced in other threads: under jit the batch is one call."""
  seen = []

  def fn(x):
    seen.append(x.shape[0])
    return x * 2.0

  x = jnp.arange(8.0).reshape(8, 1)
  np.testing.assert_array_equal(
      jax.jit(lambda x: inference.apply_in_streams(fn, x, 2, 2))(x), x * 2.0)
  assert seen == [8]


def test_model_in_streams_equals_the_whole_batch(monkeypatch):
  """streamed_apply, the path of TrainedModel and the benchmarks: at 48x64 with a chunk
  of two such images, five images run as two concurrent calls (4 and 1 images)."""
  model = create_model({'backbone_width': 8, 'stage_sizes': (1, 1, 1, 1), 'context_features': 8,
                        'decoder_features': 8})
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (5, 48, 64, 3)))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  whole = jax.jit(model.apply)(variables, x)
  monkeypatch.setattr(inference, 'CPU_CHUNK_PIXELS', 2 * 48 * 64)
  monkeypatch.setattr(inference, '_cpu_cores', lambda: 2)
  calls, in_streams = [], inference.apply_in_streams
  monkeypatch.setattr(inference, 'apply_in_streams',
                      lambda fn, x, streams, chunk: calls.append((len(x), streams, chunk))
                      or in_streams(fn, x, streams, chunk))
  apply = inference.streamed_apply(model, lambda maps: maps[..., 0])
  got = apply(variables, x)
  assert calls == [(5, 2, 2)]
  assert got.shape == (5, 48, 64)
  np.testing.assert_allclose(got, whole[..., 0], atol=1e-5)
  # Inside jit: one chunked call, the same maps.
  np.testing.assert_allclose(jax.jit(apply)(variables, x), got, atol=1e-6)


def test_model_in_chunks_equals_the_whole_batch():
  model = create_model({'backbone_width': 8, 'stage_sizes': (1, 1, 1, 1), 'context_features': 8,
                        'decoder_features': 8})
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 48, 64, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  whole = jax.jit(model.apply)(variables, x)
  for chunk in (1, 2):
    got = jax.jit(lambda v, x: inference.apply_model(model, v, x, chunk))(variables, x)
    np.testing.assert_allclose(got, whole, atol=1e-5)
  # Default on CPU: 3 x 48 x 64 pixels fit one chunk.
  assert inference.chunk_size(x.shape) == 3


def test_prepared_winograd_transforms_give_the_same_maps():
  """prepare_variables stores each Winograd convolution's kernel transform; apply_model
  with them skips the transforms and gives the maps of the plain variables and of XLA's
  convolutions."""
  from dinet_jax.models.layers import use_conv_impl
  model = create_model({'backbone_width': 32, 'stage_sizes': (1, 1, 1, 1),
                        'context_features': 64, 'decoder_features': 64})
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 64, 96, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])
  with use_conv_impl('matmul'):
    prepared = inference.prepare_variables(model, variables, (64, 96))
    apply = lambda v: jax.jit(lambda v, x: inference.apply_model(model, v, x))(v, x)
    plain, got = apply(variables), apply(prepared)
    count = lambda v: str(jax.make_jaxpr(lambda v: model.apply(v, x))(v)).count('dot_general')
    transforms = jax.tree.leaves(prepared['winograd'])
    assert count(prepared) == count(variables) - len(transforms)
  assert prepared['params'] is variables['params']
  shapes = {t.shape[:2] for t in transforms}
  assert shapes & {(4, 6), (6, 4)} and shapes <= {(4, 4), (4, 6), (6, 4)}, shapes
  with use_conv_impl('xla'):
    expected = jax.jit(model.apply)(variables, x)
    assert 'winograd' not in inference.prepare_variables(model, prepared, (64, 96))
  assert float(jnp.std(expected)) > 0.01
  np.testing.assert_allclose(got, plain, atol=1e-5)
  np.testing.assert_allclose(got, expected, atol=1e-5)
