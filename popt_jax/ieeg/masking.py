"""BrainBERT's fixed-type spectrogram masking, vectorised over the batch and jittable.

Upstream (czlwang/BrainBERT `util/mask_utils.py`, `fixed_mask_inputs`) masks one spectrogram
[T, F] at a time with Python loops. Its semantics, reproduced here:

* Time spans: every candidate start i in [0, T - time_max) opens a span with probability
  `time_p`, unless the previous span is still open (a new span needs `prev_end < i`, so spans
  never overlap or touch). The span is [i, i + L) with L uniform in [time_min, time_max].
* Each time span is kept (probability `keep_p`, 0.1), replaced by the ORIGINAL frames
  [r, r + L) of another place (`replace_p`, 0.1; r uniform over the candidate starts) or
  zeroed (the rest, 0.8).
* Frequency spans: the same on the frequency axis with `freq_p` and lengths [freq_min,
  freq_max], candidate starts [0, F - freq_max); they act after the time spans (a replaced
  frequency band is copied from the original spectrogram over every frame).
* Loss mask, upstream (`loss_mask="upstream"`, the default, for parity): every frame of a time
  span, PLUS -- a quirk -- the frequency columns whose index falls inside a time span
  (upstream writes `mask_label[:, start:end] = 1` with the time span's bounds); frequency
  spans add nothing to the loss mask. `loss_mask="corrected"`: time-span frames plus the
  frequency-span columns, no transposed columns.

Vectorisation: the random numbers are drawn per candidate position (`draw_fixed_mask`), not
per accepted span, which gives the same distribution as upstream's sequential draws. Only the
span-acceptance rule is sequential (a `lax.scan` over candidate positions with the batch as
the vector axis); everything else is gathers and comparisons. `apply_fixed_mask` is a pure
function of the spectrograms and the draws, so a PyTorch statement of upstream's loops fed
the same draws gives bit-identical masks (tests/torch_reference_brainbert_pretrain.py).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

LOSS_MASKS = ("upstream", "corrected")

# Span actions (returned per candidate position for statistics and tests).
KEEP, REPLACE, ZERO = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """Fixed-type masking settings; defaults are upstream's `fixed_mask_pretrain.yaml`.

    Attributes:
      time_p: probability that a candidate frame starts a time span (README 0.05, yaml 0.1).
      freq_p: the same for frequency bins.
      time_min, time_max: time-span length range in frames (inclusive).
      freq_min, freq_max: frequency-span length range in bins (inclusive).
      keep_p: probability a masked span is left as is.
      replace_p: probability a masked span is replaced by another span of the input.
      loss_mask: "upstream" (parity quirk, see module docstring) or "corrected".
    """

    time_p: float = 0.1
    freq_p: float = 0.1
    time_min: int = 1
    time_max: int = 5
    freq_min: int = 1
    freq_max: int = 2
    keep_p: float = 0.1
    replace_p: float = 0.1
    loss_mask: str = "upstream"

    def __post_init__(self):
        if self.loss_mask not in LOSS_MASKS:
            raise ValueError(f"loss_mask must be one of {LOSS_MASKS}, got {self.loss_mask!r}")
        if not (1 <= self.time_min <= self.time_max and 1 <= self.freq_min <= self.freq_max):
            raise ValueError("span lengths need 1 <= min <= max")


class AxisDraws(NamedTuple):
    """Random numbers of one axis, one per candidate start position: [B, n_candidates]."""

    u: jax.Array  # uniform [0, 1): the position opens a span if u < p (and none is open)
    length: jax.Array  # int: span length if opened
    dice: jax.Array  # uniform [0, 1): keep / replace / zero
    source: jax.Array  # int in [0, n_candidates): start of the replacement span


class MaskDraws(NamedTuple):
    time: AxisDraws
    freq: AxisDraws


class MaskResult(NamedTuple):
    masked: jax.Array  # [B, T, F] the model input
    loss_mask: jax.Array  # [B, T, F] bool: cells the loss is taken over
    time_starts: jax.Array  # [B, T - time_max] bool: accepted time-span starts
    time_action: jax.Array  # [B, T - time_max] int: KEEP/REPLACE/ZERO of each position
    freq_starts: jax.Array  # [B, F - freq_max] bool
    freq_action: jax.Array  # [B, F - freq_max] int
    time_covered: jax.Array  # [B, T] bool: frames inside a time span
    freq_covered: jax.Array  # [B, F] bool: bins inside a frequency span


def _axis_draws(key, batch: int, n: int, lo: int, hi: int) -> AxisDraws:
    k = jax.random.split(key, 4)
    return AxisDraws(
        u=jax.random.uniform(k[0], (batch, n)),
        length=jax.random.randint(k[1], (batch, n), lo, hi + 1),
        dice=jax.random.uniform(k[2], (batch, n)),
        source=jax.random.randint(k[3], (batch, n), 0, n),
    )


def draw_fixed_mask(key: jax.Array, batch: int, n_frames: int, n_freqs: int,
                    cfg: MaskConfig) -> MaskDraws:
    """All random numbers one batch of masks needs (position-indexed, see module docstring)."""
    if cfg.time_max >= n_frames or cfg.freq_max >= n_freqs:
        # upstream asserts time_max < T; a frequency span must fit below F as well
        raise ValueError(f"spans up to {cfg.time_max} frames / {cfg.freq_max} bins do not fit "
                         f"a [{n_frames}, {n_freqs}] spectrogram")
    kt, kf = jax.random.split(key)
    return MaskDraws(_axis_draws(kt, batch, n_frames - cfg.time_max, cfg.time_min, cfg.time_max),
                     _axis_draws(kf, batch, n_freqs - cfg.freq_max, cfg.freq_min, cfg.freq_max))


def _accept_spans(d: AxisDraws, p: float) -> jax.Array:
    """[B, n] bool: positions that open a span under upstream's `prev_end < i` rule."""
    n = d.u.shape[1]

    def body(prev_end, inputs):
        i, u, length = inputs
        start = (u < p) & (prev_end < i)
        return jnp.where(start, i + length, prev_end), start

    init = jnp.full(d.u.shape[:1], -1, jnp.int32)
    _, starts = jax.lax.scan(body, init, (jnp.arange(n, dtype=jnp.int32), d.u.T,
                                          d.length.T.astype(jnp.int32)))
    return starts.T


def _span_of(starts: jax.Array, length: jax.Array, size: int):
    """Per cell of an axis of `size`: (covered [B, size], span start [B, size] or 0)."""
    b, n = starts.shape
    idx = jnp.arange(n, dtype=jnp.int32)
    start_at = jnp.where(starts, idx, -1)
    start_at = jnp.pad(start_at, ((0, 0), (0, size - n)), constant_values=-1)
    last = jax.lax.cummax(start_at, axis=1)  # latest accepted start at or before each cell
    safe = jnp.maximum(last, 0)
    end = safe + jnp.take_along_axis(length.astype(jnp.int32), jnp.minimum(safe, n - 1), 1)
    cell = jnp.arange(size, dtype=jnp.int32)[None]
    covered = (last >= 0) & (cell < end)
    return covered, safe


def _actions(dice: jax.Array, cfg: MaskConfig) -> jax.Array:
    return jnp.where(dice < cfg.keep_p, KEEP,
                     jnp.where(dice < cfg.keep_p + cfg.replace_p, REPLACE, ZERO))


def _axis_spans(axis_draws, p: float, n: int, cfg: MaskConfig):
    """The accepted spans of one axis (length `n`): (starts, per-span actions, covered [B, n],
    action per position, source position per position). A replaced position reads the source
    span's start plus its offset in its own span (clipped; only used where covered, where it
    is in range)."""
    starts = _accept_spans(axis_draws, p)
    covered, span = _span_of(starts, axis_draws.length, n)
    last = starts.shape[1] - 1
    act_per_span = _actions(axis_draws.dice, cfg)
    act = jnp.take_along_axis(act_per_span, jnp.minimum(span, last), 1)
    src = jnp.take_along_axis(axis_draws.source, jnp.minimum(span, last), 1)
    src = jnp.clip(src + jnp.arange(n)[None] - span, 0, n - 1)
    return starts, act_per_span, covered, act, src


def apply_fixed_mask(spec: jax.Array, draws: MaskDraws, cfg: MaskConfig) -> MaskResult:
    """Masks spectrograms [B, T, F] with the given draws (pure; jit it or call inside a step)."""
    b, t, f = spec.shape
    fill = jnp.zeros((), spec.dtype)  # upstream's `get_mask_fill_value` is 0
    rows = jnp.arange(b)[:, None]

    # Time spans (frames), then frequency spans (bins) with replacements from the original.
    t_starts, t_act_pos, t_cov, t_act, t_src = _axis_spans(draws.time, cfg.time_p, t, cfg)
    replaced_t = spec[rows, t_src]  # [B, T, F]
    masked = jnp.where((t_cov & (t_act == REPLACE))[..., None], replaced_t, spec)
    masked = jnp.where((t_cov & (t_act == ZERO))[..., None], fill, masked)

    f_starts, f_act_pos, f_cov, f_act, f_src = _axis_spans(draws.freq, cfg.freq_p, f, cfg)
    replaced_f = jnp.take_along_axis(spec, jnp.broadcast_to(f_src[:, None, :], spec.shape), 2)
    masked = jnp.where((f_cov & (f_act == REPLACE))[:, None, :], replaced_f, masked)
    masked = jnp.where((f_cov & (f_act == ZERO))[:, None, :], fill, masked)

    if cfg.loss_mask == "upstream":
        # The quirk: time-span bounds also index the frequency axis (columns < F only).
        quirk_cols = t_cov[:, :f] if t >= f else jnp.pad(t_cov, ((0, 0), (0, f - t)))
        loss_mask = t_cov[:, :, None] | quirk_cols[:, None, :]
    else:
        loss_mask = t_cov[:, :, None] | f_cov[:, None, :]
    return MaskResult(masked, loss_mask, t_starts, t_act_pos, f_starts, f_act_pos, t_cov, f_cov)


def fixed_mask(key: jax.Array, spec: jax.Array, cfg: MaskConfig) -> MaskResult:
    """Draws and applies fixed-type masks to a batch [B, T, F] (jittable)."""
    b, t, f = spec.shape
    return apply_fixed_mask(spec, draw_fixed_mask(key, b, t, f, cfg), cfg)


def nearest_unmasked_frame(time_covered: jax.Array) -> jax.Array:
    """[B, T] int: for each frame the nearest frame outside every time span (itself if so).

    Ties go to the earlier frame; a batch row with every frame covered maps to itself. Used by
    the "copy the nearest unmasked frame" baseline.
    """
    b, t = time_covered.shape
    idx = jnp.arange(t, dtype=jnp.int32)[None]
    free = ~time_covered
    prev = jax.lax.cummax(jnp.where(free, idx, -1), axis=1)
    nxt = jnp.flip(jax.lax.cummin(jnp.flip(jnp.where(free, idx, t), 1), axis=1), 1)
    d_prev = jnp.where(prev >= 0, idx - prev, t + 1)
    d_next = jnp.where(nxt < t, nxt - idx, t + 1)
    out = jnp.where(d_prev <= d_next, prev, nxt)
    return jnp.where((prev < 0) & (nxt >= t), idx, out)
