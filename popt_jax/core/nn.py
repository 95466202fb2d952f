"""Small NN helpers shared by every model family: PyTorch-style init, buffers and a
hashed-index dropout.

Model code holds no paths, devices or sampling rates: configs and data code do.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's LayerNorm default; flax's is 1e-6, which would break parity.
LN_EPS = 1e-5


class Buffer(nnx.Variable):
    """A non-trainable array stored with the model (PyTorch's registered buffer)."""




def _on_2d(fn, x: jax.Array) -> jax.Array:
    """`fn` (a map of the last axis) applied to `x` flattened to 2-D, reshaped back."""
    lead = x.shape[:-1]
    y = fn(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`x @ kernel` over the last axis of `x`, computed on `x` flattened to 2-D.

    Same values as the N-D product. On XLA CPU the N-D form's backward pass is slow: the
    cotangent of the kernel is formed from a transposed copy of the [..., d_out] cotangent
    (a strided 3-D copy), which took ~3x the time of the 2-D product's (measured on
    [32, 186, 64] x [64, 128]: 4.3 ms vs 1.4 ms for the gradient).
    """
    return _on_2d(lambda a: jnp.dot(a, kernel), x)


class Linear(nnx.Linear):
    """`nnx.Linear` (same parameters, same values) computing on its input flattened to 2-D
    (see `dense`)."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return _on_2d(super().__call__, inputs)


def torch_linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype=None, zero_bias: bool = True):
    """Linear layer with PyTorch's default weight init (U(+-1/sqrt(fan_in)))."""
    bound = 1.0 / math.sqrt(d_in)
    bias_init = (nnx.initializers.zeros_init() if zero_bias
                 else nnx.initializers.uniform(2 * bound))
    layer = Linear(
        d_in, d_out, dtype=dtype, rngs=rngs,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=bias_init,
    )
    if not zero_bias:  # uniform() draws in [0, 2b): centre it
        layer.bias.value = layer.bias.value - bound
    return layer


def layer_norm(dim: int, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
    # Upstream init quirk: LayerNorm biases are filled with 1.0 (the scales stay 1).
    return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=dtype, rngs=rngs,
                         bias_init=nnx.initializers.ones_init())



def cast_floats(tree, dtype):
    """Casts every floating-point leaf of `tree` to `dtype` (e.g. weights for bf16 compute)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser with full avalanche (xor-shift / multiply rounds)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x21F0AAAD)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0xD35A2D97)
    return x ^ (x >> 15)


def hashed_bits(key: jax.Array, shape: tuple[int, ...], rows: jax.Array | None = None
                ) -> jax.Array:
    """uint32 pseudo-random bits of `shape`: a keyed hash of each element's logical index.

    The index is the element's flat position in `shape`, or, with `rows` (shape[:-1]), the
    position `rows * shape[-1] + last index` in the array the rows were taken from: a packed
    array (`TokenPacking.rows`) then gets exactly the bits of its padded original.

    Two rounds of `_mix32` keyed by 64 bits drawn from `key`. Unlike `jax.random.bits`
    (threefry: 20 rounds per pair of words; rbg: an unfused `rng_bit_generator` call), this is
    a handful of integer ops that XLA fuses into the consumer, so a dropout mask costs about
    as much as the multiply it feeds. The bits depend only on the key and the logical index,
    so they are the same however the array is sharded or packed. Good enough for dropout
    masks, not for anything needing statistical-test quality.
    """
    s = jax.random.bits(key, (2,), jnp.uint32)
    if rows is None:
        idx = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    else:
        last = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
        idx = rows.astype(jnp.uint32)[..., None] * jnp.uint32(shape[-1]) + last
    return _mix32(_mix32(idx ^ s[0]) + s[1])


class Dropout(nnx.Dropout):
    """`nnx.Dropout` (same state, streams and semantics) with the mask from `hashed_bits`.

    An element is kept when its bits are >= round(rate * 2**32), so the drop probability is
    `rate` to within 2**-32; kept elements are scaled by 1 / (1 - rate) as in torch. `rows`
    (optional, inputs.shape[:-1]) names each row's position in the unpacked array.
    """

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None,
                 rows: jax.Array | None = None):
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        if self.broadcast_dims:
            raise NotImplementedError("hashed dropout has no broadcast_dims")
        stream = self.rngs if rngs is None else rngs
        if isinstance(stream, nnx.Rngs):
            stream = stream[self.rng_collection]
        key = stream() if callable(stream) else stream
        threshold = jnp.uint32(min(round(self.rate * 2.0**32), 2**32 - 1))
        keep = hashed_bits(key, inputs.shape, rows) >= threshold
        return jnp.where(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs)).astype(
            inputs.dtype)
