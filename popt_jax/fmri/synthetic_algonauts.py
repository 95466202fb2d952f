"""A small synthetic subject in the Algonauts 2023 layout, with image-driven responses.

`write_synthetic_algonauts` writes everything `popt_jax.data.algonauts.AlgonautsSubject` reads
(PNG stimuli, `{lh,rh}_training_fmri.npy`, the six ROI families with the real ROI names,
pickled id -> name mappings, fsaverage masks) plus a per-vertex noise ceiling.

Images (default 70x70, a multiple of the 14-pixel patch) are a colour gradient, a few coloured
discs and a grating patch. A vertex's response is a sum, over the ROIs it belongs to, of that
ROI's tuning to simple image statistics -- mean colour per quadrant (retinotopic visual ROIs),
red-green contrast in the centre ("faces"), vertical edge energy ("bodies"), horizontal edges
low and blue high ("places"), centre edge energy ("words") -- plus Gaussian noise. Vertices in
no ROI get a weak random tuning. With `plant=False` the same random numbers are drawn but the
image-driven part is left out: responses are pure noise and nothing can predict them.

The noise ceiling written is the true fraction of response variance that is image-driven,
snr / (snr + 1), so the challenge metric has a known maximum of 100%.

`spatial=True` (the brain-encoder config's default) gives the responses ROI-specific spatial
structure: a coarse 4 x 4 patchwork of random colours is blended into every image, and each
named ROI of the five query families is driven by the colour and edge energy inside its own
block of that patchwork (its "place", listed in `synthetic_truth.json`), so a model must look
at the right place to predict an ROI, and pooling the image's features over the whole grid
loses what each ROI needs. `test_fmri=True` also writes the held-out responses of the test
images and their noise ceiling in the post-challenge layout (`test_split/test_fmri/`,
`test_split/noise_ceiling/`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from popt_jax.fmri.algonauts import FAMILIES, HEMIS, write_png

__all__ = ["SyntheticAlgonautsConfig", "write_synthetic_algonauts", "ROI_NAMES",
           "image_statistics", "local_statistics", "PATCHWORK"]

# The ROI names of the challenge release (id order), id 0 = vertices outside the family.
ROI_NAMES = {
    "prf-visualrois": ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    "floc-bodies": ["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-faces": ["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-places": ["OPA", "PPA", "RSC"],
    "floc-words": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
    "streams": ["early", "midventral", "midlateral", "midparietal", "ventral", "lateral",
                "parietal"],
}


@dataclasses.dataclass(frozen=True)
class SyntheticAlgonautsConfig:
    """Size and difficulty of the synthetic subject.

    Attributes:
      subject: written as subjXX.
      n_train: training images (with fMRI).
      n_test: test images (no fMRI, as in the challenge).
      image_size: square image side in pixels.
      n_vertices: (lh, rh) vertex counts.
      snr_range: per-vertex signal-to-noise variance ratio, drawn uniformly.
      plant: False -> responses are noise only.
      seed: all randomness.
      spatial: ROI-specific places (see the module docstring).
      test_fmri: also write test-split responses and noise ceiling.
    """

    subject: int = 1
    n_train: int = 300
    n_test: int = 40
    image_size: int = 70
    n_vertices: tuple[int, int] = (320, 300)
    snr_range: tuple[float, float] = (0.5, 2.0)
    plant: bool = True
    seed: int = 0
    spatial: bool = False
    test_fmri: bool = False


# --------------------------------------------------------------------------------------------
# Images and their statistics
# --------------------------------------------------------------------------------------------


def _make_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        theta = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5) + 0.5)[..., None]
        c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        img = c0 + (c1 - c0) * ramp
        for _ in range(rng.integers(1, 4)):  # discs
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
            img[disc] = rng.uniform(0, 1, 3)
        # a grating patch in one quadrant, random orientation and frequency
        qy, qx = rng.integers(0, 2, 2) * 0.5
        patch = (yy >= qy) & (yy < qy + 0.5) & (xx >= qx) & (xx < qx + 0.5)
        ori, freq = rng.uniform(0, np.pi), rng.uniform(4, 10)
        wave = np.sin(2 * np.pi * freq * (np.cos(ori) * xx + np.sin(ori) * yy))
        img = img + (0.35 * rng.uniform(0, 1) * wave * patch)[..., None]
        out[i] = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return out


def image_statistics(images: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] -> [n, 22] statistics the responses are built from.

    Per quadrant (TL, TR, BL, BR): mean R, G, B (12) and mean |d/dx|, |d/dy| of luminance (8);
    then centre red-minus-green and centre edge energy (2).
    """
    x = images.astype(np.float64) / 255.0
    n, h, w, _ = x.shape
    lum = x.mean(-1)
    dx = np.abs(np.diff(lum, axis=2, append=lum[:, :, -1:]))
    dy = np.abs(np.diff(lum, axis=1, append=lum[:, -1:, :]))
    hs, ws = h // 2, w // 2
    quads = [(slice(0, hs), slice(0, ws)), (slice(0, hs), slice(ws, w)),
             (slice(hs, h), slice(0, ws)), (slice(hs, h), slice(ws, w))]
    colour = [x[:, a, b].mean((1, 2)) for a, b in quads]                  # 4 x [n, 3]
    edges = [np.stack([dx[:, a, b].mean((1, 2)), dy[:, a, b].mean((1, 2))], -1)
             for a, b in quads]                                            # 4 x [n, 2]
    c = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    centre = np.stack([(x[:, c[0], c[1], 0] - x[:, c[0], c[1], 1]).mean((1, 2)),
                       (dx + dy)[:, c[0], c[1]].mean((1, 2))], -1)
    return np.concatenate(colour + edges + [centre], axis=1)


PATCHWORK = 4  # blocks per image side of the spatial mode's colour patchwork


def _add_patchwork(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blends a PATCHWORK x PATCHWORK field of random colours into each image."""
    n, size = images.shape[:2]
    cell = np.minimum(np.arange(size) * PATCHWORK // size, PATCHWORK - 1)
    field = rng.uniform(0, 255, (n, PATCHWORK, PATCHWORK, 3))[:, cell][:, :, cell]
    return np.clip(np.rint(0.4 * images + 0.6 * field), 0, 255).astype(np.uint8)


def local_statistics(images: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] -> [n, P, P, 4]: mean R, G, B and edge energy in each patchwork block."""
    x = images.astype(np.float64) / 255.0
    n, h, w, _ = x.shape
    lum = x.mean(-1)
    edge = (np.abs(np.diff(lum, axis=2, append=lum[:, :, -1:]))
            + np.abs(np.diff(lum, axis=1, append=lum[:, -1:, :])))
    feats = np.concatenate([x, edge[..., None]], -1)
    ys = np.minimum(np.arange(h) * PATCHWORK // h, PATCHWORK - 1)
    xs = np.minimum(np.arange(w) * PATCHWORK // w, PATCHWORK - 1)
    out = np.zeros((n, PATCHWORK, PATCHWORK, 4))
    for by in range(PATCHWORK):
        for bx in range(PATCHWORK):
            out[:, by, bx] = feats[:, ys == by][:, :, xs == bx].mean((1, 2))
    return out


def _places(rng: np.random.Generator) -> dict[str, tuple[int, int]]:
    """A patchwork block per named ROI of the query families (retinotopic-like spread)."""
    names = [n for f in FAMILIES[:5] for n in ROI_NAMES[f]]
    cells = rng.permutation(PATCHWORK * PATCHWORK)
    return {name: (int(cells[i % len(cells)] // PATCHWORK), int(cells[i % len(cells)] %
                                                               PATCHWORK))
            for i, name in enumerate(names)}


def _spatial_drives(images: np.ndarray, rng: np.random.Generator
                    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """Per ROI: its drive over images (from its own block) and its place."""
    local = local_statistics(images)
    local = (local - local.mean(0)) / (local.std(0) + 1e-9)
    places = _places(rng)
    drives = {}
    for name, (by, bx) in places.items():
        w = rng.normal(0, 1, 4)
        w[3] += np.sign(w[3]) * 0.5
        drives[name] = local[:, by, bx] @ w
    return drives, places


def _templates(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tuning vector (over the 22 statistics) of every named ROI of the query families."""
    def colour(q):
        v = np.zeros(22)
        v[3 * q:3 * q + 3] = rng.normal(0, 1, 3)
        v[12 + 2 * q:14 + 2 * q] = 0.5 * rng.normal(0, 1, 2)
        return v

    out = {}
    for i, name in enumerate(ROI_NAMES["prf-visualrois"]):
        out[name] = colour(i % 4)
    for name in ROI_NAMES["floc-bodies"]:
        v = np.zeros(22)
        v[13:20:2] = rng.uniform(0.5, 1.5, 4)  # vertical-edge energy, every quadrant
        out[name] = v
    for name in ROI_NAMES["floc-faces"]:
        v = np.zeros(22)
        v[20] = 1.0 + rng.uniform(0, 0.5)
        v[21] = rng.normal(0, 0.3)
        out[name] = v
    for name in ROI_NAMES["floc-places"]:
        v = np.zeros(22)
        v[[16, 18]] = rng.uniform(0.5, 1.5, 2)   # horizontal edges, lower quadrants
        v[[2, 5]] = rng.uniform(0.5, 1.5, 2)     # blue, upper quadrants
        out[name] = v
    for name in ROI_NAMES["floc-words"]:
        v = np.zeros(22)
        v[21] = 1.0
        v[12:20] = 0.3 * rng.normal(0, 1, 8)
        out[name] = v
    for name in out:  # a little individuality per ROI
        out[name] = out[name] + 0.15 * rng.normal(0, 1, 22)
    return out


def _roi_maps(n_v: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """ROI id per vertex for each family: visual ROIs tile the first 40%, the category ROIs
    are scattered (so they overlap each other and the visual ROIs), streams tile everything."""
    maps = {}
    vis = np.zeros(n_v, np.int64)
    cut = np.linspace(0, int(0.4 * n_v), len(ROI_NAMES["prf-visualrois"]) + 1).astype(int)
    for i in range(len(cut) - 1):
        vis[cut[i]:cut[i + 1]] = i + 1
    maps["prf-visualrois"] = vis
    for family in ("floc-bodies", "floc-faces", "floc-places", "floc-words"):
        roi = np.zeros(n_v, np.int64)
        size = max(3, int(0.025 * n_v))
        order = rng.permutation(n_v)
        for i in range(len(ROI_NAMES[family])):
            roi[order[i * size:(i + 1) * size]] = i + 1
        maps[family] = roi
    streams = np.zeros(n_v, np.int64)
    cut = np.linspace(0, int(0.9 * n_v), len(ROI_NAMES["streams"]) + 1).astype(int)
    for i in range(len(cut) - 1):
        streams[cut[i]:cut[i + 1]] = i + 1
    maps["streams"] = streams
    return maps


def _responses(stats: np.ndarray, maps: dict[str, np.ndarray], tuning: dict[str, np.ndarray],
               cfg: SyntheticAlgonautsConfig, rng: np.random.Generator,
               drives: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[n_images, n_v] responses and the per-vertex noise ceiling (fraction).

    `drives` (spatial mode) replaces each named ROI's template drive by its own."""
    n_v = len(maps["streams"])
    z = (stats - stats.mean(0)) / (stats.std(0) + 1e-9)
    signal = np.zeros((len(stats), n_v))
    for family in FAMILIES[:5]:
        for i, name in enumerate(ROI_NAMES[family]):
            members = np.flatnonzero(maps[family] == i + 1)
            drive = z @ tuning[name] if drives is None else drives[name]
            signal[:, members] += drive[:, None] * rng.uniform(0.5, 1.5, len(members))
    unknown = signal.std(0) == 0
    weak = z @ rng.normal(0, 1, (z.shape[1], n_v))
    signal[:, unknown] = 0.5 * weak[:, unknown]
    signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-9)
    snr = rng.uniform(*cfg.snr_range, n_v)
    noise = rng.normal(0, 1, signal.shape)
    drive = np.sqrt(snr) * signal if cfg.plant else 0.0 * signal
    return (drive + noise).astype(np.float32), snr / (snr + 1.0)


def _save_mapping(path: Path, names: list[str]) -> None:
    # np.save wraps the dict in a 0-d object array: the same pickle the challenge ships.
    np.save(path, {0: "Unknown", **{i + 1: n for i, n in enumerate(names)}}, allow_pickle=True)


def write_synthetic_algonauts(root: str | Path, cfg: SyntheticAlgonautsConfig = (
        SyntheticAlgonautsConfig())) -> Path:
    """Writes one synthetic subject under `root`; returns the subject folder."""
    rng = np.random.default_rng(cfg.seed)
    sdir = Path(root) / f"subj{cfg.subject:02d}"
    train_dir = sdir / "training_split" / "training_images"
    fmri_dir = sdir / "training_split" / "training_fmri"
    test_dir = sdir / "test_split" / "test_images"
    roi_dir = sdir / "roi_masks"
    for d in (train_dir, fmri_dir, test_dir, roi_dir):
        d.mkdir(parents=True, exist_ok=True)

    images = _make_images(cfg.n_train + cfg.n_test, cfg.image_size, rng)
    # The optional modes draw from their own stream, so the default subject stays as it was.
    extra = np.random.default_rng([cfg.seed, 1])
    if cfg.spatial:
        images = _add_patchwork(images, extra)
    for i in range(cfg.n_train):
        # the challenge's naming: train-NNNN_nsd-NNNNN.png
        write_png(train_dir / f"train-{i + 1:04d}_nsd-{i:05d}.png", images[i])
    for i in range(cfg.n_test):
        write_png(test_dir / f"test-{i + 1:04d}_nsd-{cfg.n_train + i:05d}.png",
                  images[cfg.n_train + i])
    n_rows = cfg.n_train + (cfg.n_test if cfg.test_fmri else 0)
    stats = image_statistics(images[:n_rows])
    tuning = _templates(rng)
    drives, places = _spatial_drives(images[:n_rows], extra) if cfg.spatial else (None, {})
    test_dir_fmri = sdir / "test_split" / "test_fmri"
    nc_dir = sdir / "test_split" / "noise_ceiling"
    if cfg.test_fmri:
        test_dir_fmri.mkdir(parents=True, exist_ok=True)
        nc_dir.mkdir(parents=True, exist_ok=True)
    for family, names in ROI_NAMES.items():
        _save_mapping(roi_dir / f"mapping_{family}.npy", names)
    ceilings = {}
    for hemi, n_v in zip(HEMIS, cfg.n_vertices, strict=True):
        maps = _roi_maps(n_v, rng)
        for family, roi in maps.items():
            np.save(roi_dir / f"{hemi}.{family}_challenge_space.npy", roi.astype(np.float32))
        fmri, nc = _responses(stats, maps, tuning, cfg, rng, drives)
        np.save(fmri_dir / f"{hemi}_training_fmri.npy", fmri[:cfg.n_train])
        if cfg.test_fmri:
            np.save(test_dir_fmri / f"{hemi}_test_fmri.npy", fmri[cfg.n_train:])
            # without a planted signal nothing is explainable: the true ceiling is 0
            np.save(nc_dir / f"{hemi}_noise_ceiling.npy",
                    (nc if cfg.plant else 0.0 * nc).astype(np.float32))
        if cfg.plant:
            np.save(fmri_dir / f"{hemi}_noise_ceiling.npy", nc.astype(np.float32))
            ceilings[hemi] = float(nc.mean())
        fs = np.zeros(3 * n_v, bool)
        fs[np.sort(rng.choice(3 * n_v, n_v, replace=False))] = True
        np.save(roi_dir / f"{hemi}.all-vertices_fsaverage_space.npy", fs)
    truth = {"config": dataclasses.asdict(cfg), "mean_noise_ceiling": ceilings,
             "places": {k: list(v) for k, v in places.items()}, "patchwork": PATCHWORK}
    (sdir / "synthetic_truth.json").write_text(json.dumps(truth, indent=1))
    return sdir


def attention_on_places(mean_attention: np.ndarray, names: list[str],
                        places: dict[str, list[int]], grid: tuple[int, int]) -> dict[str, float]:
    """How well ROI queries' attention [Q, gh*gw] lands on their planted places.

    Returns the share of planted ROIs whose attention peak lies in their block (chance
    1 / PATCHWORK^2), and the median over them of (attention mass in the block) / (the
    block's share of the grid) (1 = no preference).
    """
    gh, gw = grid
    hits, ratios = [], []
    for q, name in enumerate(names):
        if name not in places:
            continue
        by, bx = places[name]
        a = np.asarray(mean_attention[q], np.float64).reshape(gh, gw)
        ys = np.arange(gh) * PATCHWORK // gh == by
        xs = np.arange(gw) * PATCHWORK // gw == bx
        if not (ys.any() and xs.any()):  # a grid coarser than the patchwork (small ResNet
            continue                     # maps): this place has no cell of its own
        peak = np.unravel_index(int(a.argmax()), a.shape)
        hits.append(bool(ys[peak[0]] and xs[peak[1]]))
        ratios.append(a[np.ix_(ys, xs)].sum() / a.sum() / (ys.sum() * xs.sum() / (gh * gw)))
    if not hits:
        return {}
    return {"peak_in_place": float(np.mean(hits)), "chance": 1.0 / PATCHWORK ** 2,
            "median_mass_ratio": float(np.median(ratios)), "rois": len(hits)}
