"""Write a synthetic Brain Treebank (real on-disk layout) for smoke tests and default jobs.

Example:
    python scripts/make_synthetic_braintreebank.py --root /tmp/btb --seed 0 --duration-s 180

The tree holds ``all_subject_data``, ``electrode_labels``, ``localization``,
``subject_timings``, ``subject_metadata``, ``transcripts``,
``electrode_selections/clean_laplacian.json`` and ``synthetic_truth.json`` (which electrodes
carry the planted word/onset/pitch responses). See `popt_jax.data.synthetic`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from popt_jax.ieeg.synthetic import write_synthetic_braintreebank  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-subjects", type=int, default=2)
    parser.add_argument("--trials-per-subject", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=180.0, help="recording length")
    parser.add_argument("--fs", type=float, default=2048.0, help="sampling rate in Hz")
    parser.add_argument("--no-plant", action="store_true",
                        help="same layout and noise, but no stimulus-locked responses")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    root = write_synthetic_braintreebank(
        args.root, n_subjects=args.n_subjects, trials_per_subject=args.trials_per_subject,
        duration_s=args.duration_s, fs=args.fs, seed=args.seed, plant=not args.no_plant)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    print(f"wrote {root} ({size:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
