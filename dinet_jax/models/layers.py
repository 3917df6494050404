"""Convolution helper shared by all model parts: explicit torchvision-style padding, and
the CPU fast path for convolutions.

Every convolution of the model goes through :func:`conv2d`, which builds a ``nn.Conv``
(parameter ``kernel`` of shape HWIO, so checkpoints are unchanged) whose convolution
primitive is :func:`conv_general`. That function picks the formulation:

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
  convolution up to float32 summation order.
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
# Winograd is used when its multiplications times this margin (for the transforms) are
# fewer than the direct taps'.
WINOGRAD_MARGIN = 1.3

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
  parts = []
  for t in taps:
    part = _dot(_window(x, t, geo.strides), kernel[t.i, t.j], geo)
    if (t.y0, t.y1, t.x0, t.x1) != (0, oh, 0, ow):
      part = jnp.pad(part, ((0, 0), (t.y0, oh - t.y1), (t.x0, ow - t.x1), (0, 0)))
    parts.append(part)
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


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): per 4x4 input tile d and 2x2 output tile,
# y = A^T [(G g G^T) * (B^T d B)] A: 16 products instead of 36. The transforms are
# applied as small matmuls with the Kronecker products below (vec(B^T d B) = BB vec(d)).
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
_WINO_BB = np.kron(_WINO_BT, _WINO_BT)  # (16, 16)
_WINO_GG = np.kron(_WINO_G, _WINO_G)  # (16, 9)
_WINO_AA = np.kron(_WINO_AT, _WINO_AT)  # (4, 16)


def _wino_padded_size(h: int, w: int, d: int) -> tuple[int, int]:
  return -(-h // (2 * d)) * 2 * d, -(-w // (2 * d)) * 2 * d


def _left_matmul(m: np.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """``m @ x.reshape(k, -1)`` for a small constant (r, k) matrix ``m``."""
  return lax.dot_general(jnp.asarray(m, x.dtype), x.reshape(m.shape[1], -1),
                         (((1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


def _winograd_conv(x, kernel, geo: _Geometry):
  """3x3 stride-1 convolution with dilation d and padding d, Winograd F(2x2, 3x3).

  A dilated convolution is d x d interleaved dense ones: output rows are grouped in
  blocks of 2d, and row ``2bd + r`` pairs with row ``2bd + d + r`` in one tile, whose
  input rows are ``2bd + r + (k - 1) d``, k = 0..3 (so for columns). The output is
  padded to a multiple of 2d. The 16 transformed planes are multiplied by the
  transformed kernel in one batched matmul. Differentiated by JAX, the backward pass is
  Winograd too (the transposed transforms around batched matmuls).
  """
  n, h, w, c = x.shape
  cout = kernel.shape[-1]
  d = geo.dilation[0]
  hp, wp = _wino_padded_size(h, w, d)
  bh, bw = hp // (2 * d), wp // (2 * d)
  tiles = n * bh * d * bw * d
  xp = jnp.pad(x, ((0, 0), (d, hp - h + d), (d, wp - w + d), (0, 0)))
  xr = xp.reshape(n, 2 * bh + 2, d, 2 * bw + 2, d, c)
  patches = jnp.stack([xr[:, a:a + 2 * bh:2, :, b:b + 2 * bw:2]
                       for a in range(4) for b in range(4)])
  v = _left_matmul(_WINO_BB, patches).reshape(16, tiles, c)
  u = _left_matmul(_WINO_GG, kernel).reshape(16, c, cout)
  m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=geo.precision,
                      preferred_element_type=geo.preferred_element_type)
  y = _left_matmul(_WINO_AA, m).reshape(2, 2, n, bh, d, bw, d, cout)
  y = y.transpose(2, 3, 0, 4, 5, 1, 6, 7).reshape(n, hp, wp, cout)
  return y[:, :h, :w]


def _winograd_valid(kernel_shape, geo: _Geometry) -> bool:
  d = geo.dilation[0]
  return (tuple(kernel_shape[:2]) == (3, 3) and geo.strides == (1, 1)
          and geo.dilation == (d, d) and geo.padding == ((d, d), (d, d)))


def _winograd_applies(x_shape, kernel_shape, geo: _Geometry) -> bool:
  """Winograd when it is valid (3x3, stride 1, equal dilation d, padding d) and does
  fewer multiplications than the per-tap matmuls: 16 per 2x2 tile of the output padded
  to a multiple of 2d, against the taps' valid products (plus a margin for the
  transforms)."""
  if not _winograd_valid(kernel_shape, geo):
    return False
  _, h, w, _ = x_shape
  hp, wp = _wino_padded_size(h, w, geo.dilation[0])
  _, _, taps = _taps(h, w, 3, 3, geo)
  direct = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in taps)
  return 4 * hp * wp * WINOGRAD_MARGIN < direct


def _auto_method(x_shape, kernel_shape, geo: _Geometry) -> str:
  if x_shape[3] < SMALL_INPUT_CHANNELS and kernel_shape[0] * kernel_shape[1] > 1:
    return 'xla'
  if _winograd_applies(x_shape, kernel_shape, geo):
    return 'winograd'
  return 'taps'


def conv_method(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
                padding: Sequence[tuple[int, int]], dilation: Sequence[int] = (1, 1)) -> str:
  """The formulation ``matmul_conv(..., method='auto')`` uses for these shapes."""
  geo = _Geometry(tuple(strides), tuple(map(tuple, padding)), tuple(dilation), None, None)
  return _auto_method(tuple(x_shape), tuple(kernel_shape), geo)


def matmul_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int],
                padding: Sequence[tuple[int, int]], dilation: Sequence[int] = (1, 1), *,
                precision: Any = None, preferred_element_type: Any = None,
                method: str = 'auto') -> jnp.ndarray:
  """NHWC x HWIO 2-D convolution written as matrix products (see the module docstring).

  Equal to ``lax.conv_general_dilated(x, kernel, strides, padding,
  rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` up to float32
  rounding, for non-negative ``padding``. ``method``:

  * ``'taps'``: each kernel tap ``(i, j)`` contributes ``x[rows, cols] @ kernel[i, j]``
    to the output region where it reads the input, not the padding; taps that read only
    padding are skipped. The gradient (a custom VJP) is the same per-tap matmuls
    transposed.
  * ``'winograd'``: 3x3, stride 1, padding = dilation: Winograd F(2x2, 3x3)
    (:func:`_winograd_conv`), 16 instead of 36 products per 2x2 outputs.
  * ``'im2col'``: all taps gathered from the zero-padded input into one matmul.
  * ``'xla'``: ``lax.conv_general_dilated`` itself.
  * ``'auto'``: ``'xla'`` below ``SMALL_INPUT_CHANNELS`` input channels (the 7x7 stem),
    Winograd where it applies and does fewer products than the taps (not for a rate-16
    convolution on a 30x40 map, whose taps mostly read padding), else taps.
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
    return _winograd_conv(x, kernel, geo)
  if method == 'taps':
    return _tap_conv(x, kernel, geo)
  raise ValueError(f"method must be 'auto', 'taps', 'winograd', 'im2col' or 'xla', got "
                   f"{method!r}")


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


def conv2d(x: jnp.ndarray, features: int, kernel_size: int, *, stride: int = 1,
           dilation: int = 1, padding: int | None = None, use_bias: bool = False,
           name: str, dtype: Any = jnp.float32,
           kernel_init: Any = TORCH_RESNET_INIT) -> jnp.ndarray:
  """A bias-free 2-D convolution with symmetric padding, as torch's Conv2d pads.

  Call it inside a compact method: the convolution becomes a submodule named ``name``.

  ``padding`` defaults to ``dilation * (kernel_size - 1) // 2``, which keeps the size for
  stride 1 and matches torchvision's choices for its strided convolutions. The
  convolution runs through :func:`conv_general` (matmul formulation on CPU).
  """
  if padding is None:
    padding = dilation * (kernel_size - 1) // 2
  conv = nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      kernel_dilation=(dilation, dilation),
      padding=((padding, padding), (padding, padding)),
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=kernel_init,
      conv_general_dilated=conv_general,
      name=name,
  )
  return conv(x)
