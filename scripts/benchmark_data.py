"""Throughput of the PopT data path: feature-store batches vs upstream's layout, and extraction.

    python scripts/benchmark_data.py                 # defaults: ~1-2 min on 2 CPU cores
    python scripts/benchmark_data.py --tiny          # seconds (tests run it)
    python scripts/benchmark_data.py --windows 3000 --electrodes 120 --batches 100 --workers 8

Prints:
  * pretraining batches (examples/s) read from one HDF5 feature file through the grain
    pipeline (`popt_jax.data.datasets`), with 0 and ``--workers`` worker processes;
  * the same batches built the upstream way: one ``.npy`` per window in a folder, three
    ``np.load`` per example (A, B, R), ``--workers`` processes, padded to the batch maximum;
    the ratio of the two;
  * feature extraction: `extract_features` end to end on a synthetic trial with the small
    random BrainBERT of ``configs/extract_features.py`` (windows/s and electrode-windows/s,
    preprocessing and compilation included), and steady-state `brainbert_embed` throughput of
    that model and of the full-size one (a few windows; ~3 electrode-windows/s on a laptop CPU).

Both paths build examples with the same code (`datasets.make_pretrain_example`) from the same
windows (a check asserts one identical example); only the storage and the batching machinery
differ. Files are in the page cache in both cases (just written).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout

from popt_jax import ieeg as models  # noqa: E402
from popt_jax.ieeg import datasets as ds  # noqa: E402
from popt_jax.ieeg import extract as features  # noqa: E402
from popt_jax.ieeg import feature_store  # noqa: E402
from popt_jax.ieeg.synthetic import write_synthetic_braintreebank  # noqa: E402


def _feature_store_rate(src: ds.PretrainSource, batch_size: int, batches: int,
                        workers: int) -> float:
    it = iter(ds.make_dataset(src, batch_size=batch_size, train=True, seed=0,
                              worker_count=workers))
    for _ in range(2 * workers + 1):  # every worker started (spawn + imports) and reading
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t0)
    if hasattr(it, "close"):
        it.close()
    return rate


# Upstream layout: the worker state is module-level so a process pool can reach it.
_UPSTREAM: dict = {}


def _upstream_init(folder: str, pairs: dict, coords: np.ndarray) -> None:
    _UPSTREAM.update(folder=folder, pairs=pairs, coords=coords)


def _upstream_batch(indices: list[int]) -> dict[str, np.ndarray]:
    """One batch as upstream builds it: three np.load per example, pad to the batch max."""
    examples = []
    for i in indices:
        a, b, r, label = _UPSTREAM["pairs"][i]
        x = [np.load(f"{_UPSTREAM['folder']}/{w}.npy") for w in (a, b, r)]
        ex = ds.make_pretrain_example(*x, _UPSTREAM["coords"], label,
                                      np.random.default_rng([0, i]))
        examples.append(ex)
    n = max(len(e["x"]) for e in examples)  # torch pad_sequence: pad to the longest
    return ds.collate(examples, buckets=(n,))


def _upstream_rate(src: ds.PretrainSource, folder: Path, batch_size: int, batches: int,
                   workers: int) -> float:
    order = np.random.default_rng(0).permutation(len(src))
    warm = 2 * workers + 1
    need = np.resize(order, (batches + warm) * batch_size).tolist()  # epochs repeat
    pairs = {i: (int(src._win[i]), *src.pair(i)) for i in set(need)}  # (A, B, R, pair label)
    chunks = [need[k * batch_size:(k + 1) * batch_size] for k in range(batches + warm)]
    if workers == 0:  # in this process, as grain with 0 workers
        _upstream_init(str(folder), pairs, src.coords[0])
        for c in chunks[:warm]:
            _upstream_batch(c)
        t0 = time.perf_counter()
        for c in chunks[warm:]:
            _upstream_batch(c)
        return batches * batch_size / (time.perf_counter() - t0)
    ctx = mp.get_context("spawn")  # as grain's workers
    with ctx.Pool(workers, initializer=_upstream_init,
                  initargs=(str(folder), pairs, src.coords[0])) as pool:
        results = pool.imap(_upstream_batch, chunks)
        for _ in range(warm):  # every worker started and reading
            next(results)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(results)
        return batches * batch_size / (time.perf_counter() - t0)


def _embed_rate(model: models.BrainBERT, windows: int, electrodes: int, repeats: int) -> float:
    wav = np.random.default_rng(0).standard_normal((windows, electrodes, 10240)).astype(
        np.float32)
    jax.block_until_ready(models.brainbert_embed(model, wav, chunk=None))  # compile
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(models.brainbert_embed(model, wav, chunk=None))
    return repeats * windows * electrodes / (time.perf_counter() - t0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--windows", type=int, default=600, help="pretraining windows in the file")
    p.add_argument("--electrodes", type=int, default=60)
    p.add_argument("--hidden", type=int, default=768, help="embedding size (BrainBERT: 768)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=60, help="timed batches per pipeline")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--extract-windows", type=int, default=64,
                   help="pretraining windows extracted end to end with the small model")
    p.add_argument("--full-windows", type=int, default=1,
                   help="windows embedded by the full-size BrainBERT (0 = skip)")
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--tiny", action="store_true",
                   help="seconds: 200 windows x 8 electrodes x 16, batches of 8, in-process, "
                   "no extraction")
    args = p.parse_args(argv)
    if args.tiny:
        args.windows, args.electrodes, args.hidden, args.batch_size = 200, 8, 16, 8
        args.batches, args.workers, args.skip_extract = 4, 0, True

    print(f"devices: {jax.devices()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        path = features.write_random_features(
            tmp / "features", n_electrodes=args.electrodes, n_windows=args.windows,
            hidden_dim=args.hidden, n_task=10)
        size = path.stat().st_size / 2**20
        src = ds.PretrainSource(tmp / "features", "train",
                                ds.PretrainConfig(split_mode="random"))
        print(f"feature store: {args.windows} windows x {args.electrodes} electrodes x "
              f"{args.hidden} in one {size:.0f} MiB file ({time.perf_counter() - t0:.1f} s)")

        t0 = time.perf_counter()
        folder = tmp / "npy"
        folder.mkdir()
        with h5py.File(path, "r") as f:
            emb = f["pretrain/embeddings"]
            for w in range(len(emb)):
                np.save(folder / f"{w}.npy", emb[w])
        print(f"upstream layout: {args.windows} .npy files ({time.perf_counter() - t0:.1f} s)")

        # The same examples both ways (same windows and the same draws).
        rec = src[0]
        ex_store = ds.make_pretrain_example(rec["a"], rec["b"], rec["r"], rec["coords"],
                                            rec["pair_label"], np.random.default_rng([0, 0]))
        _upstream_init(str(folder), {0: (int(src._win[0]), *src.pair(0))}, src.coords[0])
        ex_up = _upstream_batch([0])
        np.testing.assert_array_equal(ex_up["x"][0, :len(ex_store["x"])], ex_store["x"])

        bs, nb = args.batch_size, args.batches
        r0 = _feature_store_rate(src, bs, nb, 0)
        rw = r0 if args.workers == 0 else _feature_store_rate(src, bs, nb, args.workers)
        ru = _upstream_rate(src, folder, bs, nb, args.workers)
        print(f"pretraining batches of {bs}, feature store + grain, 0 workers: "
              f"{r0:10.1f} examples/s")
        print(f"pretraining batches of {bs}, feature store + grain, {args.workers} workers: "
              f"{rw:10.1f} examples/s")
        print(f"pretraining batches of {bs}, upstream .npy x3 per example, {args.workers} "
              f"workers: {ru:10.1f} examples/s")
        print(f"ratio vs reference: feature store / upstream .npy ({args.workers} workers "
              f"each): {rw / ru:.2f}x")

        if args.skip_extract:
            return
        base = _small_config()
        small = models.BrainBERT(models.BrainBERTConfig(**base), rngs=nnx.Rngs(0))
        root = write_synthetic_braintreebank(tmp / "bt", n_subjects=1, duration_s=60, seed=0)
        t0 = time.perf_counter()
        paths = features.extract_features(
            root, tmp / "extracted", checkpoint_hash="bench", brainbert=small,
            selection=root / "electrode_selections/clean_laplacian.json", tasks=("pretrain",),
            max_windows=args.extract_windows, batch_windows=32, progress_every_s=1e9)
        dt = time.perf_counter() - t0
        e = len(feature_store.read_attrs(paths[0])["electrode_names"])
        n = args.extract_windows
        arch = ", ".join(f"{k} {v}" for k, v in base.items())
        print(f"extract_features end to end, small BrainBERT ({arch}), {e} electrodes: "
              f"{n / dt:8.1f} windows/s ({n * e / dt:.0f} electrode-windows/s; "
              "preprocessing and compilation included)")
        print(f"brainbert_embed steady state, small: "
              f"{_embed_rate(small, 32, e, 2):10.1f} electrode-windows/s")
        if args.full_windows:
            full = models.BrainBERT(rngs=nnx.Rngs(0))
            print(f"brainbert_embed steady state, full size (768, 6 layers): "
                  f"{_embed_rate(full, args.full_windows, e, 1):10.1f} electrode-windows/s")


def _small_config() -> dict:
    """The random-weights BrainBERT architecture of configs/extract_features.py."""
    import importlib.util

    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "extract_features.py"
    spec = importlib.util.spec_from_file_location("extract_features_config", cfg_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.get_config().brainbert)


if __name__ == "__main__":
    main()
