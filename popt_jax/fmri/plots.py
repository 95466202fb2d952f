"""Brain-encoder figures (matplotlib Agg): per-ROI mean r bars, and ROI queries'
cross-attention over the patch grid drawn on the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plot_roi_scores", "plot_attention"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roi_scores(summary: dict[str, Any], path: str | os.PathLike, title: str = "",
                    baseline: dict[str, Any] | None = None) -> Path:
    """Bar chart of mean r per ROI (lh and rh, optionally a baseline's) plus all vertices."""
    plt = _pyplot()
    names = list(summary["roi"]) + ["All vertices"]

    def values(s, hemi):
        return [s["roi"].get(n, {}).get(hemi, np.nan) for n in names[:-1]] + [
            s[f"mean_r_{hemi}"]]

    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names)), 4.2))
    bars = [("lh", summary, 0.0, "tab:blue"), ("rh", summary, 1.0, "tab:orange")]
    if baseline is not None:
        bars += [("lh", baseline, 2.0, "lightsteelblue"), ("rh", baseline, 3.0, "navajowhite")]
    width = 0.8 / len(bars)
    for hemi, s, k, colour in bars:
        label = f"{hemi} {'ridge' if s is baseline else 'transformer'}"
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, values(s, hemi), width, label=label,
               color=colour)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean Pearson r")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    ax.set_title(title or f"validation mean r = {summary['mean_r']:.3f}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_attention(image: np.ndarray, attention: np.ndarray, names: Sequence[str],
                   grid: tuple[int, int], patch: int, path: str | os.PathLike,
                   title: str = "") -> Path:
    """One panel per ROI query: its cross-attention [gh*gw] over the patch grid on the image.

    The grid covers the zero-padded image (gh*patch x gw*patch); the image is drawn at its
    own size in the top-left corner, as the padding was added on the right and bottom.
    """
    plt = _pyplot()
    gh, gw = grid
    n = len(names)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.4 * (n + 1), 2.6))
    extent = (0, gw * patch, gh * patch, 0)
    axes[0].imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
    axes[0].set_xlim(0, gw * patch)
    axes[0].set_ylim(gh * patch, 0)
    axes[0].set_title("image", fontsize=9)
    for ax, name, att in zip(axes[1:], names, attention, strict=True):
        ax.imshow(image, extent=(0, image.shape[1], image.shape[0], 0))
        a = np.asarray(att, np.float64).reshape(gh, gw)
        ax.imshow(a / max(a.max(), 1e-12), extent=extent, cmap="inferno", alpha=0.6,
                  interpolation="bilinear")
        ax.set_xlim(0, gw * patch)
        ax.set_ylim(gh * patch, 0)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_block_weights(weights: dict[str, np.ndarray], blocks: Sequence[int],
                       path: str | os.PathLike) -> Path:
    """Histogram per hemisphere of each backbone block's per-vertex ensemble weight."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(weights), figsize=(4.5 * len(weights), 3.2))
    for ax, (hemi, w) in zip(np.atleast_1d(axes), weights.items(), strict=True):
        for b, row in zip(blocks, w, strict=True):
            ax.hist(row, bins=20, range=(0, 1), alpha=0.6,
                    label=f"enc_output_layer {b} (mean {row.mean():.2f})")
        ax.set_xlabel("per-vertex weight")
        ax.set_title(hemi, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_top_images(images: dict[str, list[np.ndarray]], scores: dict[str, np.ndarray],
                    path: str | os.PathLike) -> Path:
    """A grid: one row per ROI, its top images left to right with their predicted response."""
    plt = _pyplot()
    rows, cols = len(images), max(len(v) for v in images.values())
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for r, (name, imgs) in enumerate(images.items()):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c])
                ax.set_title(f"{scores[name][c]:.2f}", fontsize=7)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.suptitle("top predicted images per ROI (mean over its vertices)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
