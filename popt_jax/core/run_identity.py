"""What a run was made from, recorded in its workdir and checked when it is resumed.

A job describes its inputs as a JSON-able dict (feature store fingerprint, checkpoint hashes,
data root, selections, split settings); `check_or_record` writes it to
`{workdir}/run_identity.json` when the run starts fresh, and when the workdir already holds
work (checkpoints, finished files) it compares instead and refuses with one line naming every
field that differs, so a resumed run never silently mixes two sets of inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from absl import logging

from popt_jax.core.jsonio import atomic_json
from popt_jax.errors import UserError

FILE = "run_identity.json"
_HASH_LIMIT = 1 << 31  # files above 2 GiB are identified by size and mtime, not hashed


class InputMismatch(UserError):
    """The workdir's recorded inputs differ from this run's."""


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """{path, sha256} of a file ({path, bytes, mtime} above 2 GiB); {path, files} of a
    folder (names and sizes of what is inside); {path: None}-like for a missing one."""
    p = Path(path)
    out: dict[str, Any] = {"path": str(p.absolute())}
    if p.is_file():
        size = p.stat().st_size
        if size > _HASH_LIMIT:
            out.update(bytes=size, mtime_ns=p.stat().st_mtime_ns)
        else:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out["sha256"] = h.hexdigest()
    elif p.is_dir():
        h = hashlib.sha256()
        for q in sorted(p.rglob("*")):
            if q.is_file() and not q.name.startswith(".") and ".tmp" not in q.name:
                h.update(f"{q.relative_to(p)}:{q.stat().st_size}\n".encode())
        out["listing_sha256"] = h.hexdigest()
    else:
        out["missing"] = True
    return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field: recorded X, now Y` for every leaf that differs (lists compared whole)."""
    a, b = _flatten(json.loads(json.dumps(recorded))), _flatten(json.loads(json.dumps(current)))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(absent)") != b.get(key, "(absent)"):
            out.append(f"{key}: recorded {_short(a.get(key, '(absent)'))}, "
                       f"now {_short(b.get(key, '(absent)'))}")
    return out


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    # Long values keep both ends: two paths usually differ in their last part.
    return text if len(text) <= 80 else text[:37] + "..." + text[-40:]


def check_or_record(workdir: str | os.PathLike, identity: dict[str, Any], *,
                    resuming: bool) -> None:
    """Records `identity` (fresh run) or checks it against the recorded one (`resuming`).

    Raises:
      InputMismatch: resuming, and the recorded inputs differ (nothing is changed).
    """
    path = Path(workdir) / FILE
    if resuming and path.exists():
        try:
            recorded = json.loads(path.read_text())
        except ValueError:
            raise InputMismatch(f"{path}: not valid JSON; cannot tell what this workdir was "
                                "made from (remove the file to accept the current inputs)"
                                ) from None
        diffs = differences(recorded, identity)
        if diffs:
            raise InputMismatch(
                f"{workdir}: this run's inputs differ from the ones its saved work was made "
                f"from ({'; '.join(diffs[:6])}{'; ...' if len(diffs) > 6 else ''}); nothing "
                "was changed: rerun with the original inputs or pick another --workdir")
        return
    if resuming:
        logging.warning("%s holds earlier work but no %s: its inputs cannot be checked; "
                        "recording this run's", workdir, FILE)
    atomic_json(path, identity)


def has_checkpoints(directory: str | os.PathLike) -> bool:
    """Whether an Orbax checkpoint folder holds at least one finished step."""
    d = Path(directory)
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())
