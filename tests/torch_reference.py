"""A small PyTorch statement of BrainBERT and PopT, used only by the parity tests.

The modules are laid out so that `state_dict()` has exactly the keys and shapes of the
published upstream checkpoints (`masked_tf_model` for BrainBERT, `pt_model_custom` for PopT,
`pt_downstream_model` for the fine-tuning wrapper). Behaviour follows `SPEC.md` sections 1-3:

* BrainBERT uses torch's own `nn.TransformerEncoder` (post-norm, erf GELU), fed
  [seq, batch, dim] as upstream does.
* PopT uses a hand-written post-norm layer around `nn.MultiheadAttention` so that every
  layer's per-head attention weights come back.

Also here: the numpy STFT feature pipeline of upstream's data code (`ref_brainbert_spectrogram`),
random re-initialisation for tests (`randomize`) and an upstream-style checkpoint writer
(`save_upstream_checkpoint`).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import scipy.signal
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "RefBrainBERT",
    "RefPopT",
    "RefPopTDownstream",
    "randomize",
    "save_upstream_checkpoint",
    "ref_brainbert_spectrogram",
    "ref_brainbert_embed",
    "no_fastpath",
    "RefLamb",
]


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def _torch_sinusoids(max_len: int, dim: int) -> torch.Tensor:
    """[max_len, dim] sin (even columns) / cos (odd columns) table, float32 torch arithmetic."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


@contextlib.contextmanager
def no_fastpath():
    """Turns off torch's fused eval-mode transformer/MHA kernels for the duration.

    With a padding mask, the fast path may return nested-tensor zeros at padded positions;
    the reference must compute every position the plain way.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


class _SinusoidTable(nn.Module):
    """Holds the `pe` buffer [1, max_len, dim] as the upstream checkpoints store it."""

    def __init__(self, dim: int, max_len: int = 5000):
        super().__init__()
        self.register_buffer("pe", _torch_sinusoids(max_len, dim)[None])


class _SpecHead(nn.Module):
    """hidden -> Linear -> GELU -> LayerNorm -> Linear(hidden -> out_dim)."""

    def __init__(self, hidden_dim: int, out_dim: int):
        super().__init__()
        self.hidden_layer = nn.Linear(hidden_dim, hidden_dim)
        self.act_fn = nn.GELU()
        self.layer_norm = nn.LayerNorm(hidden_dim)
        self.output = nn.Linear(hidden_dim, out_dim)

    def forward(self, h):
        return self.output(self.layer_norm(self.act_fn(self.hidden_layer(h))))


def _upstream_init(module: nn.Module) -> None:
    # Upstream's `init_weights`: Linear biases zero, LayerNorm biases 1.0.
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.bias)


# ----------------------------------------------------------------------------------------------
# BrainBERT
# ----------------------------------------------------------------------------------------------


class _BrainBERTInput(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, dropout: float = 0.1):
        super().__init__()
        self.in_proj = nn.Linear(input_dim, hidden_dim)
        self.positional_encoding = _SinusoidTable(hidden_dim)
        self.layer_norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, spec):
        h = self.in_proj(spec)
        h = h + self.positional_encoding.pe[:, : h.shape[1]]
        return self.dropout(self.layer_norm(h))


class RefBrainBERT(nn.Module):
    """BrainBERT (`masked_tf_model`): spectrogram [B, T, F] -> hidden [B, T, d]."""

    def __init__(self, input_dim: int = 40, hidden_dim: int = 768, nhead: int = 12,
                 ff: int = 3072, n_layers: int = 6):
        super().__init__()
        self.input_encoding = _BrainBERTInput(input_dim, hidden_dim)
        layer = nn.TransformerEncoderLayer(hidden_dim, nhead, ff, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.spec_prediction_head = _SpecHead(hidden_dim, input_dim)
        self.apply(_upstream_init)

    def forward(self, spec: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """spec [B, T, F], pad_mask [B, T] (True = padding) -> hidden [B, T, d]."""
        x = self.input_encoding(spec).transpose(0, 1)  # the encoder is sequence-first
        with no_fastpath():
            x = self.transformer(x, src_key_padding_mask=pad_mask)
        return x.transpose(0, 1)

    def predict_spectrogram(self, spec, pad_mask=None):
        return self.spec_prediction_head(self(spec, pad_mask))


# ----------------------------------------------------------------------------------------------
# PopT
# ----------------------------------------------------------------------------------------------


class _SpatialCode(_SinusoidTable):
    """pe[L] | pe[I] | pe[P] | pe[seq_id] per electrode token; pe[0] four times for CLS."""

    def __init__(self, hidden_dim: int, max_len: int = 5000):
        super().__init__(hidden_dim // 4, max_len)

    def forward(self, coords, seq_id):
        table = self.pe[0]
        b, n, _ = coords.shape
        xyz = table[coords].reshape(b, n, -1)  # torch indexing: negative indices wrap
        codes = torch.cat([xyz, table[seq_id]], dim=-1)
        cls = table[0].repeat(4)[None, None].expand(b, 1, -1)
        return torch.cat([cls, codes], dim=1)


class _PopTInput(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, dropout: float = 0.1):
        super().__init__()
        self.in_proj = nn.Linear(input_dim, hidden_dim)
        self.positional_encoding = _SpatialCode(hidden_dim)
        self.layer_norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens, coords, seq_id):
        h = self.in_proj(tokens) + self.positional_encoding(coords, seq_id)
        return self.dropout(self.layer_norm(h))


class _PopTLayer(nn.Module):
    """Post-norm layer that also hands back the per-head attention weights."""

    def __init__(self, d_model: int, nhead: int, ff: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        a, w = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=True,
                              average_attn_weights=False)
        x = self.norm1(x + self.dropout1(a))
        f = self.linear2(self.dropout(F.gelu(self.linear1(x))))
        x = self.norm2(x + self.dropout2(f))
        return x, w


class _PopTEncoder(nn.Module):
    def __init__(self, d_model: int, nhead: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_PopTLayer(d_model, nhead) for _ in range(n_layers))

    def forward(self, x, key_padding_mask=None):
        weights = []
        for layer in self.layers:
            x, w = layer(x, key_padding_mask)
            weights.append(w)
        return x, weights


class RefPopT(nn.Module):
    """PopT (`pt_model_custom` with the multi-subject spatial code)."""

    def __init__(self, input_dim: int = 768, hidden_dim: int = 512, n_head: int = 8,
                 n_layers: int = 6, use_token_cls_head: bool = True, cls_out_dim: int = 1):
        super().__init__()
        self.input_encoding = _PopTInput(input_dim, hidden_dim)
        self.transformer_encoder = _PopTEncoder(hidden_dim, n_head, n_layers)
        self.spec_prediction_head = _SpecHead(hidden_dim, input_dim)
        self.apply(_upstream_init)
        # Upstream builds the heads after its init pass: they keep torch's default init.
        self.cls_head = nn.Linear(hidden_dim, cls_out_dim)
        self.use_token_cls_head = use_token_cls_head
        if use_token_cls_head:
            self.token_cls_head = nn.Linear(hidden_dim, cls_out_dim)

    def forward(self, inputs, src_key_mask, coords, seq_id):
        """Runs PopT.

        Args:
          inputs: [B, 1 + n, input_dim], the CLS row of ones already at index 0.
          src_key_mask: [B, 1 + n] bool, True = padding.
          coords: [B, n, 3] long.
          seq_id: [B, n] long.

        Returns:
          (hidden [B, 1 + n, d], cls logits [B, out], token logits [B, n, out] or None,
           list of per-layer attention weights [B, heads, 1 + n, 1 + n]).
        """
        h = self.input_encoding(inputs, coords, seq_id).transpose(0, 1)
        with no_fastpath():
            h, weights = self.transformer_encoder(h, key_padding_mask=src_key_mask)
        h = h.transpose(0, 1)
        cls_logits = self.cls_head(h[:, 0])
        token_logits = self.token_cls_head(h[:, 1:]) if self.use_token_cls_head else None
        return h, cls_logits, token_logits, weights


class RefPopTDownstream(nn.Module):
    """Fine-tuning wrapper (`pt_downstream_model`): Linear on the CLS hidden state."""

    def __init__(self, upstream: RefPopT | None = None, hidden_dim: int = 512):
        super().__init__()
        self.upstream = upstream if upstream is not None else RefPopT(hidden_dim=hidden_dim)
        self.linear_out = nn.Linear(hidden_dim, 1)

    def forward(self, inputs, src_key_mask, coords, seq_id):
        hidden = self.upstream(inputs, src_key_mask, coords, seq_id)[0]
        return self.linear_out(hidden[:, 0])


# ----------------------------------------------------------------------------------------------
# Test utilities
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Redraws every parameter so that no default (0 bias, 1/0 LayerNorm) hides a bug.

    Matrices ~ N(0, 1/fan_in) (keeps activations O(1)), biases ~ 0.1 N, LayerNorm
    weight ~ 1 + 0.1 N and bias ~ 0.1 N. Buffers (`pe`) are left alone.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    norms = {id(m) for m in model.modules() if isinstance(m, nn.LayerNorm)}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(module) in norms and name == "weight":
                p.copy_(1.0 + 0.1 * normal(p.shape))
            elif p.ndim == 1:
                p.copy_(0.1 * normal(p.shape))
            else:
                p.copy_(normal(p.shape) / math.sqrt(p.shape[-1]))
    return model.eval()


def save_upstream_checkpoint(model: nn.Module, path, model_cfg: dict) -> None:
    """Writes `model` the way upstream's trainer does: model, model_cfg, optim, scheduler.

    The optimiser and scheduler states are real ones (AdamW after one step, StepLR), made on
    detached copies of the parameters so the saved weights are exactly `model`'s.
    """
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(dict(model_cfg))
    except ImportError:  # pragma: no cover - omegaconf is in the test venv
        cfg = dict(model_cfg)
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    optim = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=10, gamma=0.99)
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    optim.step()
    sched.step()
    torch.save({"model": model.state_dict(), "model_cfg": cfg, "optim": optim.state_dict(),
                "scheduler": sched.state_dict()}, path)


def ref_brainbert_spectrogram(x: np.ndarray, nperseg: int = 400, noverlap: int = 350,
                              n_freqs: int = 40, trim: int = 10) -> np.ndarray:
    """Upstream's STFT features of one window [E, samples] -> float32 [E, T, F] (float64 math).

    scipy STFT at 2048 Hz, first `n_freqs` rows, magnitude, per-row z-score over time with a
    zero std replaced by 1, the whole array replaced by ones when its std is 0, `trim` frames
    dropped at each end, NaN -> 0, time-major.
    """
    x = np.asarray(x, dtype=np.float64)
    _, _, z = scipy.signal.stft(x, 2048, nperseg=nperseg, noverlap=noverlap,
                                return_onesided=True)
    mag = np.abs(z[:, :n_freqs])
    mean = mag.mean(axis=-1, keepdims=True)
    std = mag.std(axis=-1, keepdims=True)
    std[std == 0] = 1.0
    feat = (mag - mean) / std
    if feat.std() == 0:
        feat = np.ones_like(feat)
    feat = feat[:, :, trim:-trim]
    feat = np.nan_to_num(feat, nan=0.0)
    return np.transpose(feat, (0, 2, 1)).astype(np.float32)


@torch.no_grad()
def ref_brainbert_embed(model: RefBrainBERT, x: np.ndarray) -> np.ndarray:
    """One window [E, samples] -> BrainBERT embeddings [E, d]: mean of the 10 centre frames."""
    spec = torch.from_numpy(ref_brainbert_spectrogram(x))
    pad = torch.zeros(spec.shape[:2], dtype=torch.bool)
    hidden = model.eval()(spec, pad)
    mid = hidden.shape[1] // 2
    return hidden[:, mid - 5: mid + 5].mean(dim=1).numpy()


class RefLamb(torch.optim.Optimizer):
    """LAMB as `torch_optimizer.Lamb` (upstream's pretraining optimiser), restated here.

    Per parameter with a gradient (None: skipped): Adam moments without bias correction
    (`debias=False`), step = m / (sqrt(v) + eps) (+ weight_decay * p), trust ratio
    min(||p||, clamp_value) / ||step|| (1 when either norm is 0), p -= lr * ratio * step.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 clamp_value=10.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.clamp_value = clamp_value

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                weight_norm = torch.norm(p).clamp(0, self.clamp_value)
                adam_step = m / v.sqrt().add(group["eps"])
                if group["weight_decay"] != 0:
                    adam_step.add_(p, alpha=group["weight_decay"])
                adam_norm = torch.norm(adam_step)
                ratio = 1.0 if weight_norm == 0 or adam_norm == 0 else weight_norm / adam_norm
                p.add_(adam_step, alpha=-group["lr"] * float(ratio))
