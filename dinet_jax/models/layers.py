"""Convolution helper shared by all model parts: explicit torchvision-style padding, and
the CPU fast path for convolutions.

Every convolution of the model goes through :func:`conv2d`, which builds a
:class:`Conv2d` (the variables of ``nn.Conv``: ``kernel`` of shape HWIO, so checkpoints
are unchanged) whose convolution primitive is :func:`conv_general`. That function picks
the formulation:

* ``'xla'``: ``lax.conv_general_dilated``, the plain formulation. Best on GPU and TPU.
* ``'matmul'``: the convolution as matrix products, one per kernel tap
  (:func:`matmul_conv`). On CPU, XLA runs ``dot`` through its fast matmul library
  (YNNPACK/XNNPACK) but convolutions through Eigen, and the kernel gradients of
  convolutions, which XLA rewrites into convolutions with the batch (4) as the
  contraction depth and the whole feature map as the window, run several times slower
  than the equivalent matmul. Written as matmuls, the backward pass is matmuls too.
  Taps of a dilated kernel that read only zero padding (a rate-16 tap on a 30x40 map)
  are skipped, and each tap multiplies only the output region where it reads real
  input, so no multiply-adds by padding zeros are done: the result equals the plain
  convolution up to float32 summation order. 3x3 stride-1 convolutions run as Winograd
  F(m_h x m_w, 3x3) where that does fewer multiply-adds (:func:`_winograd_conv`).
* ``'auto'`` (default): ``'matmul'`` when the default backend is CPU, else ``'xla'``.

Choose globally with the environment variable ``DINET_CONV_IMPL`` (read at import) or
with ``with use_conv_impl('xla'): ...`` around the *tracing* (the first call of a jitted
function; later calls reuse the compiled code).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Any, Iterator, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# torchvision initialises ResNet convolutions with kaiming_normal_(mode='fan_out').
TORCH_RESNET_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# The authors' Keras layers (DIM, decoder) used Keras' default, Glorot uniform.
KERAS_INIT = nn.initializers.glorot_uniform()

CONV_IMPLS = ('auto', 'xla', 'matmul')
# Below this many input channels (the 7x7 stem on RGB) per-tap matmuls would have a
# contraction depth of only ``Cin``; XLA's own convolution is faster there, forward
# and kernel gradient (the input gradient of the stem is never needed).
SMALL_INPUT_CHANNELS = 32
# Winograd is used when its multiply-adds (products and transforms) times this margin
# (for its extra passes over memory) are fewer than the direct taps'.
WINOGRAD_MARGIN = 1.1
# Winograd convolutions with at most this many input channels compute their kernel
# gradient from a transposed copy of the transformed input
# (:func:`_batched_product_transposed_grad`). In-process A/B of training steps against
# none: 120x160 0.988, 240x320 0.991; against 256 channels: 0.997 and 1.019.
TRANSPOSED_GRAD_CHANNELS = 128

_state = threading.local()
_DEFAULT_IMPL = os.environ.get('DINET_CONV_IMPL', 'auto')
if _DEFAULT_IMPL not in CONV_IMPLS:
  raise ValueError(f'DINET_CONV_IMPL must be one of {CONV_IMPLS}, got {_DEFAULT_IMPL!r}')


def get_conv_impl() -> str:
  """The convolution formulation in force: 'auto', 'xla' or 'matmul'."""
  return getattr(_state, 'impl', _DEFAULT_IMPL)


@contextlib.contextmanager
def use_conv_impl(impl: str) -> Iterator[None]:
  """Traces convolutions with ``impl`` ('auto', 'xla' or 'matmul') inside the block."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {impl!r}')
  previous = get_conv_impl()
  _state.impl = impl
  try:
    yield
  finally:
    _state.impl = previous


def resolve_conv_impl(impl: str | None = None) -> str:
  """'auto' -> 'matmul' on a CPU default backend, 'xla' elsewhere."""
  impl = get_conv_impl() if impl is None else impl
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv impl must be one of {CONV_IMPLS}, got {impl!r}')
  return impl


class _Tap(NamedTuple):
  """One kernel tap: output region [y0, y1) x [x0, x1) reads input from (r0, c0) on."""
  i: int
  j: int
  y0: int
  y1: int
  x0: int
  x1: int
  r0: int
  c0: int


class _Geometry(NamedTuple):
  strides: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  dilation: tuple[int, int]
  precision: Any
  preferred_element_type: Any


def _tap_range(size: int, out_size: int, offset: int, stride: int) -> tuple[int, int]:
  """Output indices [o0, o1) whose input index ``o * stride + offset`` is in [0, size)."""
  o0 = -(offset // stride) if offset < 0 else 0
  o1 = min(out_size, (size - 1 - offset) // stride + 1)
  return o0, max(o0, o1)


def _taps(h: int, w: int, kh: int, kw: int, geo: _Geometry) -> tuple[int, int, list[_Tap]]:
  """Output size and the taps that read at least one input element."""
  (sh, sw), ((plh, phh), (plw, phw)), (dh, dw) = geo.strides, geo.padding, geo.dilation
  oh = (h + plh + phh - dh * (kh - 1) - 1) // sh + 1
  ow = (w + plw + phw - dw * (kw - 1) - 1) // sw + 1
  taps = []
  for i in range(kh):
    y0, y1 = _tap_range(h, oh, i * dh - plh, sh)
    for j in range(kw):
      x0, x1 = _tap_range(w, ow, j * dw - plw, sw)
      if y1 > y0 and x1 > x0:
        taps.append(_Tap(i, j, y0, y1, x0, x1, y0 * sh + i * dh - plh, x0 * sw + j * dw - plw))
  return oh, ow, taps


def _window(src: jnp.ndarray, t: _Tap, strides: tuple[int, int]) -> jnp.ndarray:
  """The input elements tap ``t`` reads, (N, y1 - y0, x1 - x0, C)."""
  (sh, sw), n, c = strides, src.shape[0], src.shape[3]
  return lax.slice(src, (0, t.r0, t.c0, 0),
                   (n, t.r0 + (t.y1 - t.y0 - 1) * sh + 1, t.c0 + (t.x1 - t.x0 - 1) * sw + 1, c),
                   (1, sh, sw, 1))


def _place(part: jnp.ndarray, t: _Tap, oh: int, ow: int) -> jnp.ndarray:
  """Tap ``t``'s products on its output region, zero-padded to the (oh, ow) output."""
  if (t.y0, t.y1, t.x0, t.x1) == (0, oh, 0, ow):
    return part
  return jnp.pad(part, ((0, 0), (t.y0, oh - t.y1), (t.x0, ow - t.x1), (0, 0)))


def _dot(x: jnp.ndarray, w: jnp.ndarray, geo: _Geometry) -> jnp.ndarray:
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=geo.precision,
                         preferred_element_type=geo.preferred_element_type)


def _sum(parts: list[jnp.ndarray]) -> jnp.ndarray:
  out = parts[0]
  for p in parts[1:]:
    out = out + p
  # Materialise the sum once: XLA would otherwise fuse the sum of padded products into
  # each of its consumers (the next convolution's nine windows) and recompute it there.
  return lax.optimization_barrier(out) if len(parts) > 1 else out


def _tap_conv_fwd(x, kernel, geo: _Geometry):
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  oh, ow, taps = _taps(h, w, kh, kw, geo)
  if not taps:
    dtype = geo.preferred_element_type or jnp.result_type(x.dtype, kernel.dtype)
    return jnp.zeros((n, oh, ow, cout), dtype), (x, kernel)
  parts = [_place(_dot(_window(x, t, geo.strides), kernel[t.i, t.j], geo), t, oh, ow)
           for t in taps]
  return _sum(parts), (x, kernel)


def _tap_conv_bwd(geo: _Geometry, res, g):
  x, kernel = res
  n, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  _, _, taps = _taps(h, w, kh, kw, geo)
  (sh, sw) = geo.strides
  g = lax.optimization_barrier(g.astype(x.dtype))
  dx_parts = []
  dk = [[None] * kw for _ in range(kh)]
  nograd = _Geometry(geo.strides, geo.padding, geo.dilation, geo.precision, None)
  for t in taps:
    gt = g[:, t.y0:t.y1, t.x0:t.x1]
    # Input gradient: the tap's products go back to the input elements it read.
    part = _dot(gt, kernel[t.i, t.j].T, nograd)
    last_r = t.r0 + (t.y1 - t.y0 - 1) * sh
    last_c = t.c0 + (t.x1 - t.x0 - 1) * sw
    dx_parts.append(lax.pad(part, jnp.zeros((), part.dtype),
                            ((0, 0, 0), (t.r0, h - 1 - last_r, sh - 1),
                             (t.c0, w - 1 - last_c, sw - 1), (0, 0, 0))))
    # Kernel gradient: window^T @ gradient, contracting batch and space. As 2-D
    # operands XLA multiplies the transposed window in place; 4-D ones it would first
    # copy transposed, recomputing the window's producers (BatchNorm, ReLU, residual
    # sums) inside each copy.
    dk[t.i][t.j] = lax.dot_general(_window(x, t, geo.strides).reshape(-1, cin),
                                   gt.reshape(-1, cout), (((0,), (0,)), ((), ())),
                                   precision=geo.precision)
  zero = jnp.zeros((cin, cout), kernel.dtype)
  dkernel = jnp.stack([jnp.stack([zero if d is None else d.astype(kernel.dtype) for d in row])
                       for row in dk])
  dx = _sum(dx_parts).astype(x.dtype) if dx_parts else jnp.zeros_like(x)
  return dx, dkernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tap_conv(x, kernel, geo: _Geometry):
  return _tap_conv_fwd(x, kernel, geo)[0]


_tap_conv.defvjp(_tap_conv_fwd, _tap_conv_bwd)


def _im2col_conv(x, kernel, geo: _Geometry):
  """All taps gathered from the zero-padded input into one matmul (few input channels)."""
  n, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  oh, ow, taps = _taps(h, w, kh, kw, geo)
  (plh, phh), (plw, phw) = geo.padding
  (sh, sw), (dh, dw) = geo.strides, geo.dilation
  xp = jnp.pad(x, ((0, 0), (plh, phh), (plw, phw), (0, 0)))
  patches = [lax.slice(xp, (0, t.i * dh, t.j * dw, 0),
                       (n, t.i * dh + (oh - 1) * sh + 1, t.j * dw + (ow - 1) * sw + 1, cin),
                       (1, sh, sw, 1)) for t in taps]
  weights = jnp.concatenate([kernel[t.i, t.j] for t in taps], axis=0)
  return _dot(jnp.concatenate(patches, axis=-1), weights, geo)


def _tap_outputs_conv(x, kernel, geo: _Geometry):
  """Few output channels: every tap's products with the whole input in one matmul, (N, H,
  W, taps x Cout), then each tap's share read where it lands and summed. The input is
  read once instead of once per tap (the taps' windows); the products on padding rows
  and columns are computed and dropped. Differentiated by JAX (a matmul and slices)."""
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  oh, ow, taps = _taps(h, w, kh, kw, geo)
  if not taps:
    return _tap_conv(x, kernel, geo)
  z = _dot(x, jnp.concatenate([kernel[t.i, t.j] for t in taps], axis=1), geo)
  return functools.reduce(jnp.add, [
      _place(_window(z[..., q * cout:(q + 1) * cout], t, geo.strides), t, oh, ow)
      for q, t in enumerate(taps)])


# Winograd F(m, 3) (Lavin & Gray 2016) for m = 2 and 4 outputs per tile and axis: per
# (m + 2)-input tile d, y = A^T [(G g) * (B^T d)] in 1-D, and in 2-D with the transforms
# on both axes, (m_h + 2)(m_w + 2) products per m_h x m_w outputs instead of 9 each:
# F(2x2, 3x3) does 16 per 4, F(4x4, 3x3) 36 per 16.
_WINO_1D = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    # Points 0, 1, -1, 2, -1/2 (and infinity): in float32, 2.6 times less error than
    # Lavin & Gray's 0, +-1, +-2 for sums over 256 channels (Barabasz et al. 2020 found
    # such points by search).
    4: (np.array([[1, 3 / 2, -2, -3 / 2, 1, 0], [0, -1, -5 / 2, -1 / 2, 1, 0],
                  [0, 1, 1 / 2, -5 / 2, 1, 0], [0, -1 / 2, -1, 1 / 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 1, 3 / 2, -2, -3 / 2, 1]]),
        np.array([[1, 0, 0], [-1 / 3, -1 / 3, -1 / 3], [1 / 3, -1 / 3, 1 / 3],
                  [1 / 15, 2 / 15, 4 / 15], [-16 / 15, 8 / 15, -4 / 15], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -1 / 2, 0], [0, 1, 1, 4, 1 / 4, 0],
                  [0, 1, -1, 8, -1 / 8, 1]])),
}
# The tiles (m_h, m_w) the automatic choice considers. Not F(4x4, 3x3): it has 4-13 times
# the float32 error of the direct sum (F(2x2, 3x3): 1-2 times, the mixed tiles 2-4
# times; 256 channels, ReLU inputs), enough to flip more ReLUs whose input is near 0; in
# the PyTorch parity test the parameter gradients came 10 times further from float64
# than PyTorch's float32 ones. For inference it was no faster than the mixed tiles (its
# batched products, with a quarter of the rows, run at lower FLOP/s).
WINOGRAD_TILES = ((2, 2), (2, 4), (4, 2))


@functools.lru_cache(maxsize=None)
def _wino_matrices(mh: int, mw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The 2-D transforms as Kronecker products: vec(B_h^T d B_w) = BB vec(d)."""
  (bh, gh, ah), (bw, gw, aw) = _WINO_1D[mh], _WINO_1D[mw]
  return tuple(np.kron(a, b).astype(np.float32) for a, b in ((bh, bw), (gh, gw), (ah, aw)))


def _wino_padded_size(h: int, w: int, d: int, tile: tuple[int, int]) -> tuple[int, int]:
  mh, mw = tile
  return -(-h // (mh * d)) * mh * d, -(-w // (mw * d)) * mw * d


def _left_matmul(m: np.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """``m @ x.reshape(k, -1)`` for a small constant (r, k) matrix ``m``."""
  return lax.dot_general(jnp.asarray(m, x.dtype), x.reshape(m.shape[1], -1),
                         (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


def winograd_kernel(kernel: jnp.ndarray, tile: tuple[int, int]) -> jnp.ndarray:
  """The (m_h + 2, m_w + 2, Cin, Cout) Winograd transform G g G^T of a 3x3 HWIO kernel."""
  mh, mw = tile
  return _left_matmul(_wino_matrices(mh, mw)[1], kernel).reshape(mh + 2, mw + 2,
                                                                 *kernel.shape[2:])


def _batched_product(v, u, precision, preferred_element_type):
  """``M[t] = V[t] @ U[t]``: the Winograd-domain product, [T, P, Cin] x [T, Cin, Cout]."""
  return lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision,
                         preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _batched_product_transposed_grad(v, u, precision, preferred_element_type):
  """:func:`_batched_product` whose kernel gradient ``V[t]^T dM[t]`` multiplies an
  explicitly transposed copy of V ([T, Cin, P]).

  Differentiated plainly, that product contracts the first axis of V, and XLA's CPU
  backend runs such batched products through Eigen, at 24-48 GFLOP/s for DINet's 64- and
  128-channel layers; on the transposed copy it is a plain batched matmul for
  YNNPACK. The optimization barrier keeps XLA from folding the transpose back into the
  product. For wider layers Eigen reaches 120-220 GFLOP/s and the copy costs more than
  it saves (``TRANSPOSED_GRAD_CHANNELS``).
  """
  return _batched_product(v, u, precision, preferred_element_type)


def _transposed_grad_fwd(v, u, precision, preferred_element_type):
  return _batched_product(v, u, precision, preferred_element_type), (v, u)


def _transposed_grad_bwd(precision, preferred_element_type, residuals, dm):
  v, u = residuals
  dv = lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,))), precision=precision,
                       preferred_element_type=preferred_element_type)
  vt = lax.optimization_barrier(jnp.swapaxes(v, 1, 2))
  du = _batched_product(vt, dm, precision, preferred_element_type)
  return dv.astype(v.dtype), du.astype(u.dtype)


_batched_product_transposed_grad.defvjp(_transposed_grad_fwd, _transposed_grad_bwd)


def winograd_patches(xp: jnp.ndarray, tile: tuple[int, int], d: int) -> jnp.ndarray:
  """The Winograd input tiles of a padded (N, (m_h b_h + 2) d, (m_w b_w + 2) d, C) map
  ``xp``, (t_h, t_w, N, b_h, d, b_w, d, C) with t = m + 2: element (a, b) of tile
  (n, i, r, j, s) is ``xp[n, (m_h i + a) d + r, (m_w j + b) d + s]``.

  Stacked per tile row: XLA's CPU backend compiles this nesting into one concatenating
  loop, where one stack of all t_h t_w strided slices ran as that many slice operations
  and a copy (DINet, 240x320: 2.6% of batch-1 inference, 1.5-2% of a training step).
  """
  (mh, mw), (n, hp, wp, c) = tile, xp.shape
  bh, bw = (hp // d - 2) // mh, (wp // d - 2) // mw
  xr = xp.reshape(n, mh * bh + 2, d, mw * bw + 2, d, c)
  return jnp.stack([jnp.stack([xr[:, a:a + mh * bh:mh, :, b:b + mw * bw:mw]
                               for b in range(mw + 2)]) for a in range(mh + 2)])


def _winograd_conv(x, kernel, geo: _Geometry, tile: tuple[int, int],
                   transformed: jnp.ndarray | None = None):
  """3x3 stride-1 convolution with dilation d and padding d, Winograd F(m_h x m_w, 3x3).

  A dilated convolution is d x d interleaved dense ones: output rows are grouped in
  blocks of m d, and rows ``m b d + k d + r``, k = 0..m-1, form one tile, whose input
  rows are ``m b d + r + (k - 1) d``, k = 0..m+1 (so for columns). The output is padded
  to a multiple of m d. The transformed planes are multiplied by the transformed kernel
  in one batched matmul. Differentiated by JAX, the backward pass is Winograd too (the
  transposed transforms around batched matmuls). ``transformed``, if given, is
  ``winograd_kernel(kernel, tile)`` computed beforehand.
  """
  n, h, w, c = x.shape
  cout = kernel.shape[-1]
  d = geo.dilation[0]
  mh, mw = tile
  th, tw = mh + 2, mw + 2
  bb, _, aa = _wino_matrices(mh, mw)
  hp, wp = _wino_padded_size(h, w, d, tile)
  bh, bw = hp // (mh * d), wp // (mw * d)
  tiles = n * bh * d * bw * d
  xp = jnp.pad(x, ((0, 0), (d, hp - h + d), (d, wp - w + d), (0, 0)))
  v = _left_matmul(bb, winograd_patches(xp, tile, d)).reshape(th * tw, tiles, c)
  if transformed is None:
    transformed = winograd_kernel(kernel, tile)
  u = transformed.reshape(th * tw, c, cout)
  product = (_batched_product_transposed_grad if c <= TRANSPOSED_GRAD_CHANNELS
             else _batched_product)
  m = product(v, u, geo.precision, geo.preferred_element_type)
  y = _left_matmul(aa, m).reshape(mh, mw, n, bh, d, bw, d, cout)
  y = y.transpose(2, 3, 0, 4, 5, 1, 6, 7).reshape(n, hp, wp, cout)
  return y[:, :h, :w]


def _winograd_valid(kernel_shape, geo: _Geometry) -> bool:
  d = geo.dilation[0]
  return (tuple(kernel_shape[:2]) == (3, 3) and geo.strides == (1, 1)
          and geo.dilation == (d, d) and geo.padding == ((d, d), (d, d)))


def _winograd_cost(x_shape, cout: int, tile: tuple[int, int], d: int) -> int:
  """Multiply-adds of Winograd with ``tile``: the products, (m_h + 2)(m_w + 2) per tile of
  the output padded to a multiple of m d, plus the transforms as the matmuls
  :func:`_winograd_conv` runs."""
  n, h, w, cin = x_shape
  hp, wp = _wino_padded_size(h, w, d, tile)
  planes = (tile[0] + 2) * (tile[1] + 2)
  tiles = n * (hp // tile[0]) * (wp // tile[1])
  return (tiles * planes * cin * cout + tiles * planes * planes * cin
          + planes * 9 * cin * cout
          + tiles * planes * tile[0] * tile[1] * cout)


def _winograd_tile(x_shape, kernel_shape, geo: _Geometry) -> tuple[int, int] | None:
  """The Winograd tile for this convolution, or None for the per-tap matmuls.

  Winograd needs a 3x3 kernel, stride 1 and dilation = padding. Each tile in
  ``WINOGRAD_TILES`` is costed in multiply-adds (products and transforms); the cheapest
  is used if its cost times ``WINOGRAD_MARGIN`` is below the taps' valid products (the
  taps also read their windows and add their partial products).
  """
  if not _winograd_valid(kernel_shape, geo):
    return None
  n, h, w, cin = x_shape
  cout = kernel_shape[-1]
  _, _, taps = _taps(h, w, 3, 3, geo)
  direct = n * sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in taps) * cin * cout
  cost, tile = min((_winograd_cost(x_shape, cout, t, geo.dilation[0]), t)
                   for t in WINOGRAD_TILES)
  return tile if cost * WINOGRAD_MARGIN < direct else None


def _auto_method(x_shape, kernel_shape, geo: _Geometry) -> str:
  if x_shape[3] < SMALL_INPUT_CHANNELS and kernel_shape[0] * kernel_shape[1] > 1:
    return 'xla'
  if _winograd_tile(x_shape, kernel_shape, geo) is not None:
    return 'winograd'
  _, _, taps = _taps(*x_shape[1:3], *kernel_shape[:2], geo)
  if len(taps) > 1 and len(taps) * kernel_shape[3] <= x_shape[3]:
    return 'tap_outputs'
  return 'taps'


def conv_method(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
                padding: Sequence[tuple[int, int]], dilation: Sequence[int] = (1, 1)) -> str:
  """The formulation ``matmul_conv(..., method='auto')`` uses for these shapes."""
  geo = _Geometry(tuple(strides), tuple(map(tuple, padding)), tuple(dilation), None, None)
  return _auto_method(tuple(x_shape), tuple(kernel_shape), geo)


def winograd_tile(x_shape: Sequence[int], kernel_shape: Sequence[int],
                  strides: Sequence[int], padding: Sequence[tuple[int, int]],
                  dilation: Sequence[int] = (1, 1)) -> tuple[int, int] | None:
  """The Winograd tile ``matmul_conv(..., method='auto')`` uses for these shapes (None
  when it uses another formulation)."""
  geo = _Geometry(tuple(strides), tuple(map(tuple, padding)), tuple(dilation), None, None)
  if _auto_method(tuple(x_shape), tuple(kernel_shape), geo) != 'winograd':
    return None
  return _winograd_tile(tuple(x_shape), tuple(kernel_shape), geo)


def matmul_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int],
                padding: Sequence[tuple[int, int]], dilation: Sequence[int] = (1, 1), *,
                precision: Any = None, preferred_element_type: Any = None,
                method: str = 'auto', tile: tuple[int, int] | None = None,
                transformed_kernel: jnp.ndarray | None = None) -> jnp.ndarray:
  """NHWC x HWIO 2-D convolution written as matrix products (see the module docstring).

  Equal to ``lax.conv_general_dilated(x, kernel, strides, padding,
  rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` up to float32
  rounding, for non-negative ``padding``. ``method``:

  * ``'taps'``: each kernel tap ``(i, j)`` contributes ``x[rows, cols] @ kernel[i, j]``
    to the output region where it reads the input, not the padding; taps that read only
    padding are skipped. The gradient (a custom VJP) is the same per-tap matmuls
    transposed.
  * ``'winograd'``: 3x3, stride 1, padding = dilation: Winograd F(m_h x m_w, 3x3)
    (:func:`_winograd_conv`) with ``tile`` = (m_h, m_w), sizes 2 or 4 (default: the
    cheapest of ``WINOGRAD_TILES``, see :func:`winograd_tile`); F(2x4, 3x3) does 24
    instead of 72 products per 2x4 outputs. ``transformed_kernel``:
    ``winograd_kernel(kernel, tile)`` computed beforehand; its shape sets the tile.
  * ``'im2col'``: all taps gathered from the zero-padded input into one matmul.
  * ``'tap_outputs'``: all taps' products with the whole input in one matmul, shifted
    into place and summed (:func:`_tap_outputs_conv`); for few output channels (the
    decoder's 256 -> 1 output layer: 0.30 against 0.84 ms with taps, 0.87 against
    1.90 ms with both gradients, batch 1 at 30x40).
  * ``'xla'``: ``lax.conv_general_dilated`` itself.
  * ``'auto'``: ``'xla'`` below ``SMALL_INPUT_CHANNELS`` input channels (the 7x7 stem),
    Winograd where it applies and does fewer products than the taps (not for a rate-16
    convolution on a 30x40 map, whose taps mostly read padding), ``'tap_outputs'`` where
    the taps' outputs (taps x Cout per pixel) are no more than Cin, else taps.
  """
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
    raise ValueError(f'expected NHWC input and HWIO kernel with matching channels, got '
                     f'{x.shape} and {kernel.shape}')
  geo = _Geometry(tuple(map(int, strides)), tuple(tuple(map(int, p)) for p in padding),
                  tuple(map(int, dilation)), precision, preferred_element_type)
  if method == 'auto':
    method = _auto_method(x.shape, kernel.shape, geo)
  if method == 'xla':
    return lax.conv_general_dilated(
        x, kernel, geo.strides, geo.padding, rhs_dilation=geo.dilation,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision,
        preferred_element_type=preferred_element_type)
  if method == 'im2col':
    return _im2col_conv(x, kernel, geo)
  if method == 'winograd':
    if not _winograd_valid(kernel.shape, geo):
      raise ValueError('winograd needs a 3x3 kernel, stride 1 and padding = dilation')
    if transformed_kernel is not None:
      if (transformed_kernel.ndim != 4 or transformed_kernel.shape[2:] != kernel.shape[2:]
          or any(s - 2 not in _WINO_1D for s in transformed_kernel.shape[:2])):
        raise ValueError(f'transformed_kernel of shape {transformed_kernel.shape} is not a '
                         f'Winograd transform of a kernel of shape {kernel.shape}')
      tile = (transformed_kernel.shape[0] - 2, transformed_kernel.shape[1] - 2)
    elif tile is None:
      tile = _winograd_tile(x.shape, kernel.shape, geo) or (2, 2)
    elif len(tile) != 2 or any(m not in _WINO_1D for m in tile):
      raise ValueError(f'tile must be a pair of sizes in {tuple(_WINO_1D)}, got {tile}')
    return _winograd_conv(x, kernel, geo, tuple(tile), transformed_kernel)
  if method == 'taps':
    return _tap_conv(x, kernel, geo)
  if method == 'tap_outputs':
    return _tap_outputs_conv(x, kernel, geo)
  raise ValueError(f"method must be 'auto', 'taps', 'tap_outputs', 'winograd', 'im2col' or "
                   f"'xla', got {method!r}")


_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lhs, rhs, out specs of NHWC/HWIO/NHWC


def _is_nhwc(dimension_numbers: Any, ndim: int) -> bool:
  if ndim != 4:
    return False
  if dimension_numbers is None:
    return False  # lax's default is NCHW/OIHW.
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(map(tuple, dimension_numbers)) == _NHWC
  return tuple(dimension_numbers) == ('NHWC', 'HWIO', 'NHWC')


def conv_general(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
                 padding: Any, lhs_dilation: Sequence[int] | None = None,
                 rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1, batch_group_count: int = 1,
                 precision: Any = None, preferred_element_type: Any = None, *,
                 impl: str | None = None) -> jnp.ndarray:
  """``lax.conv_general_dilated`` with the formulation chosen by ``impl`` (default: the
  one in force, see :func:`use_conv_impl`). Cases the matmul path does not cover (not
  NHWC/HWIO, string or negative padding, input dilation, grouped convolutions) use
  ``lax`` whatever ``impl``."""
  plain = lambda: lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if resolve_conv_impl(impl) == 'xla':
    return plain()
  rhs_dilation = tuple(rhs_dilation or (1, 1))
  if (not _is_nhwc(dimension_numbers, lhs.ndim) or isinstance(padding, str)
      or any(p < 0 for pair in padding for p in pair)
      or any(d != 1 for d in (lhs_dilation or (1, 1)))
      or feature_group_count != 1 or batch_group_count != 1):
    return plain()
  return matmul_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)),
                     rhs_dilation, precision=precision,
                     preferred_element_type=preferred_element_type)


WINOGRAD_COLLECTION = 'winograd'


class Conv2d(nn.Module):
  """A 2-D NHWC convolution with the variables of ``nn.Conv`` (``kernel`` HWIO, ``bias``)
  run through :func:`conv_general`.

  Winograd convolutions can use a kernel transform computed beforehand, for inference:
  applied with the collection ``'winograd'`` mutable, each stores
  :func:`winograd_kernel` of its kernel there (for the tile chosen for that input
  shape); applied with that collection among its variables, it uses the stored
  transform instead of transforming ``kernel`` on every call (and gets no gradient for
  ``kernel``). See :func:`dinet_jax.inference.prepare_variables`.
  """

  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  padding: int = 0
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Any = TORCH_RESNET_INIT

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, cin, self.features), jnp.float32)
    bias = (self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias else None)
    geometry = dict(strides=(self.stride,) * 2, padding=((self.padding,) * 2,) * 2,
                    dilation=(self.dilation,) * 2)
    tile = (winograd_tile(x.shape, kernel.shape, **geometry)
            if resolve_conv_impl() == 'matmul' else None)
    transformed = None
    if tile is not None and self.has_variable(WINOGRAD_COLLECTION, 'kernel'):
      transformed = self.get_variable(WINOGRAD_COLLECTION, 'kernel')
    elif (tile is not None and self.is_mutable_collection(WINOGRAD_COLLECTION)
          and not self.is_initializing()):
      transformed = winograd_kernel(kernel, tile)
      self.put_variable(WINOGRAD_COLLECTION, 'kernel', transformed)
    x, kernel, bias, transformed = nn.dtypes.promote_dtype(x, kernel, bias, transformed,
                                                           dtype=self.dtype)
    if transformed is not None:  # Its shape sets the tile.
      y = matmul_conv(x, kernel, **geometry, method='winograd',
                      transformed_kernel=transformed)
    else:
      y = conv_general(x, kernel, geometry['strides'], geometry['padding'],
                       rhs_dilation=geometry['dilation'],
                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y if bias is None else y + bias


def conv2d(x: jnp.ndarray, features: int, kernel_size: int, *, stride: int = 1,
           dilation: int = 1, padding: int | None = None, use_bias: bool = False,
           name: str, dtype: Any = jnp.float32,
           kernel_init: Any = TORCH_RESNET_INIT) -> jnp.ndarray:
  """A bias-free 2-D convolution with symmetric padding, as torch's Conv2d pads.

  Call it inside a compact method: the convolution becomes a :class:`Conv2d` submodule
  named ``name``.

  ``padding`` defaults to ``dilation * (kernel_size - 1) // 2``, which keeps the size for
  stride 1 and matches torchvision's choices for its strided convolutions. The
  convolution runs through :func:`conv_general` (matmul formulation on CPU).
  """
  if padding is None:
    padding = dilation * (kernel_size - 1) // 2
  return Conv2d(features, kernel_size, stride=stride, dilation=dilation, padding=padding,
                use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, name=name)(x)
