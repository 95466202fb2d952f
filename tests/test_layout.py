"""The package's import rules: `core` imports no model family; `ieeg` and `fmri` never import
each other. Checked on the source (every `import`/`from` statement, also inside functions),
so a lazy import cannot hide a wrong dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "popt_jax"
FORBIDDEN = {
    "core": ("popt_jax.ieeg", "popt_jax.fmri", "popt_jax.main"),
    "ieeg": ("popt_jax.fmri", "popt_jax.main"),
    "fmri": ("popt_jax.ieeg", "popt_jax.main"),
}


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for family, banned in FORBIDDEN.items():
        for path in sorted((root / family).rglob("*.py")):
            bad_lines: dict[int, str] = {}
            for line, module in imported_modules(path, root):
                if any(module == b or module.startswith(b + ".") for b in banned):
                    bad_lines.setdefault(line, module)  # one report per import statement
            found += [f"{path.relative_to(root.parent)}:{line} imports {module}"
                      for line, module in sorted(bad_lines.items())]
    return found


def test_families_and_core_import_only_downwards():
    assert violations() == []


@pytest.mark.parametrize("family, bad", [("core", "from popt_jax.ieeg import popt"),
                                         ("fmri", "import popt_jax.ieeg.signal"),
                                         ("ieeg", "    from popt_jax.fmri.dinov2 import DinoV2")])
def test_checker_catches_a_wrong_import(tmp_path, family, bad):
    root = tmp_path / "popt_jax"
    for fam in FORBIDDEN:
        (root / fam).mkdir(parents=True)
    body = f"def f():\n{bad}\n" if bad.startswith(" ") else bad + "\n"
    (root / family / "mod.py").write_text(body)
    assert len(violations(root)) == 1
