"""Re-derive upstream's `clean_laplacian` electrode selection from a Brain Treebank tree.

    python scripts/derive_electrode_selection.py --root /data/braintreebank \\
        --out runs/clean_laplacian.json --check clean_laplacian

BrainBERT's rule (popt_jax/ieeg/selections/SOURCES.md): per subject, the cleaned labels of
`electrode_labels/<sub>/electrode_labels.json`, minus the subject's corrupted channels
(`--corrupted`: default BrainBERT's list, packaged as `brainbert_corrupted_elec`; compared as
written), keeping the contacts whose two shaft neighbours are kept too. `--check` compares
the result with a selection file (packaged name or path) as sets per subject and exits 1 on
a difference. Subjects: `--subjects`, else every subject of the corrupted list found in the
tree. Writes `--out` atomically (JSON {subject: [names]}, label order) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from popt_jax.errors import DataError, UserError
from popt_jax.ieeg import selections
from popt_jax.ieeg.braintreebank import BrainTreebank, load_selection, subject_id


def derive(root: Path, corrupted_spec: str, subjects: list[str] | None
           ) -> dict[str, list[str]]:
    """{subject: selected electrodes} of the tree at `root`."""
    bt = BrainTreebank(root)
    corrupted = selections.load_corrupted(corrupted_spec)
    in_tree = bt.subjects()
    wanted = [subject_id(s) for s in subjects] if subjects else [
        s for s in in_tree if s in corrupted]
    out = {}
    for s in wanted:
        labels_path = bt.labels_path(s)
        try:
            raw = json.loads(Path(labels_path).read_text())
        except (OSError, ValueError) as err:
            raise DataError(labels_path, f"cannot read electrode labels ({err})"
                                       ) from None
        out[s] = selections.derive_clean_laplacian(raw, corrupted.get(s, []))
    return out


def compare(derived: dict[str, list[str]], shipped: dict[str, list[str]]) -> list[str]:
    """One line per subject whose sets differ (subjects of `derived` only)."""
    lines = []
    for s, names in derived.items():
        want = set(shipped.get(s, []))
        got = set(names)
        if got != want:
            lines.append(f"{s}: only derived {sorted(got - want)}; only shipped "
                         f"{sorted(want - got)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="Brain Treebank root")
    parser.add_argument("--corrupted", default="brainbert_corrupted_elec",
                        help="corrupted-channel JSON (packaged name or path)")
    parser.add_argument("--subjects", nargs="*", default=None)
    parser.add_argument("--out", default="", help="output JSON (optional)")
    parser.add_argument("--check", default="", help="selection to compare with")
    args = parser.parse_args(argv)
    try:
        derived = derive(Path(args.root), args.corrupted, args.subjects)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(derived))
            os.replace(tmp, out)
        for s, names in derived.items():
            print(f"{s}: {len(names)} electrodes")
        if args.check:
            diffs = compare(derived, load_selection(selections.resolve(args.check)))
            for line in diffs:
                print(f"differs: {line}")
            print("check: " + ("DIFFERENT" if diffs else f"same as {args.check}"))
            return 1 if diffs else 0
    except (UserError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
