"""Declarative config checks, run before a job does any work.

Each family states its rules once (`popt_jax.ieeg.validate`, `popt_jax.fmri.validate`) with
the small checks below; `Checks.done()` raises one `ConfigError` listing every problem as
`config.<field>: <problem>` (one line), so a bad value never surfaces later as a traceback
or a misleading message from deep inside a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

from popt_jax.errors import ConfigError

_MISSING = object()


class Checks:
    """Collects problems of one config; fields are dotted paths below `prefix`.

    A field the config does not have is skipped (configs of other variants lack some), unless
    the check is called with `required=True`.
    """

    def __init__(self, config, prefix: str = "config"):
        self.config, self.prefix = config, prefix
        self.problems: list[str] = []

    # ---------------------------------------------------------------- access
    def get(self, field: str, default: Any = _MISSING) -> Any:
        node = self.config
        for part in field.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError):
                return default
        return node

    def fail(self, field: str, problem: str) -> None:
        self.problems.append(f"{self.prefix}.{field}: {problem}")

    def _value(self, field: str, required: bool):
        value = self.get(field)
        if value is _MISSING and required:
            self.fail(field, "is missing")
        return value

    # ---------------------------------------------------------------- checks
    def integer(self, field: str, *, min_value: int | None = None, max_value: int | None = None,
                allow: Iterable[Any] = (), required: bool = False) -> None:
        """An int (bools refused) within [min_value, max_value], or one of `allow`."""
        v = self._value(field, required)
        if v is _MISSING or _in(v, allow):
            return
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(field, f"must be an integer, got {v!r}")
            return
        if min_value is not None and v < min_value or max_value is not None and v > max_value:
            self.fail(field, f"must be {_range(min_value, max_value)}, got {v}"
                      + (f" (or one of {list(allow)})" if allow else ""))

    def positive_int(self, field: str, **kw) -> None:
        self.integer(field, min_value=1, **kw)

    def non_negative_int(self, field: str, **kw) -> None:
        self.integer(field, min_value=0, **kw)

    def number(self, field: str, *, min_value: float | None = None,
               max_value: float | None = None, min_open: bool = False, max_open: bool = False,
               required: bool = False) -> None:
        """A finite real number in the given (open or closed) bounds."""
        v = self._value(field, required)
        if v is _MISSING:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self.fail(field, f"must be a finite number, got {v!r}")
            return
        low_bad = min_value is not None and (v <= min_value if min_open else v < min_value)
        high_bad = max_value is not None and (v >= max_value if max_open else v > max_value)
        if low_bad or high_bad:
            lo = "" if min_value is None else ("(" if min_open else "[") + f"{min_value}"
            hi = "" if max_value is None else f"{max_value}" + (")" if max_open else "]")
            where = (f"in {lo}, {hi}" if lo and hi else
                     f"{'>' if min_open else '>='} {min_value}" if lo else
                     f"{'<' if max_open else '<='} {max_value}")
            self.fail(field, f"must be {where}, got {v}")

    def positive(self, field: str, **kw) -> None:
        self.number(field, min_value=0, min_open=True, **kw)

    def non_negative(self, field: str, **kw) -> None:
        self.number(field, min_value=0, **kw)

    def fraction(self, field: str, *, open_low: bool = True, open_high: bool = True,
                 **kw) -> None:
        """A number in (0, 1) by default; the ends can be made closed."""
        self.number(field, min_value=0, max_value=1, min_open=open_low, max_open=open_high, **kw)

    def choice(self, field: str, choices: Iterable[Any], *, required: bool = False) -> None:
        v = self._value(field, required)
        choices = list(choices)
        if v is not _MISSING and v not in choices:
            self.fail(field, f"{v!r} is not one of {', '.join(repr(c) for c in choices)}")

    def subset(self, field: str, choices: Iterable[Any], *, non_empty: bool = True) -> None:
        v = self.get(field)
        if v is _MISSING:
            return
        choices = list(choices)
        if isinstance(v, str) or not isinstance(v, Iterable):
            self.fail(field, f"must be a list drawn from {choices}, got {v!r}")
            return
        bad = [x for x in v if x not in choices]
        if bad:
            self.fail(field, f"unknown {', '.join(repr(x) for x in bad)} (choose from "
                      f"{', '.join(repr(c) for c in choices)})")
        elif non_empty and not list(v):
            self.fail(field, "must not be empty")

    def existing_path(self, field: str, kind: str = "any") -> None:
        """An empty value passes (means "not given"); otherwise the path must exist as `kind`
        ('file', 'dir' or 'any')."""
        v = self.get(field)
        if v is _MISSING or v is None or v == "":
            return
        if not isinstance(v, (str, os.PathLike)):
            self.fail(field, f"must be a path, got {v!r}")
            return
        if not os.path.exists(v):
            self.fail(field, f"{os.fspath(v)}: No such file or directory")
        elif kind == "dir" and not os.path.isdir(v):
            self.fail(field, f"{os.fspath(v)}: Not a directory")
        elif kind == "file" and not os.path.isfile(v):
            self.fail(field, f"{os.fspath(v)}: is a directory, expected a file")

    def divisible(self, field: str, by_field: str) -> None:
        """`field` (an int) is a multiple of `by_field` (an int), e.g. width by heads."""
        a, b = self.get(field), self.get(by_field)
        if (isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool)
                and a > 0 and b > 0 and a % b):
            self.fail(field, f"{a} is not divisible by {self.prefix}.{by_field} = {b}")

    def rule(self, ok: bool, field: str, problem: str) -> None:
        """A free-form rule (e.g. two fields that must agree)."""
        if not ok:
            self.fail(field, problem)

    def done(self) -> None:
        """Raises one ConfigError naming every problem found (no-op when none)."""
        if self.problems:
            raise ConfigError("; ".join(self.problems))


def _in(v, allow) -> bool:
    try:
        return any(v is a or (type(v) is type(a) and v == a) for a in allow)
    except TypeError:
        return False


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    return f">= {lo}" if lo is not None else f"<= {hi}"
