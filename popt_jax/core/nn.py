"""Small NN helpers shared by every model family: PyTorch-style init and buffers.

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




def torch_linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype=None, zero_bias: bool = True):
    """Linear layer with PyTorch's default weight init (U(+-1/sqrt(fan_in)))."""
    bound = 1.0 / math.sqrt(d_in)
    bias_init = (nnx.initializers.zeros_init() if zero_bias
                 else nnx.initializers.uniform(2 * bound))
    layer = nnx.Linear(
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


