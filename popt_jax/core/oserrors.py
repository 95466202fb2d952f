"""One line for an operating-system failure: `<path>: <errno meaning>`.

OS errors reach `popt_jax.main` in several shapes: a plain `OSError` (filename and strerror
set), an h5py `OSError` whose text embeds `name = '...'` and `errno = N`, a tensorstore
`ValueError` quoting `[OS error N: ...]`, or an Orbax error wrapping one of those as its
cause. `os_failure` finds the errno and the path in any of them; `describe` renders it.
"""

from __future__ import annotations

import errno as errno_lib
import os
import re

_ERRNO_PATTERNS = (re.compile(r"errno\s*=\s*(\d+)"), re.compile(r"\[Errno (\d+)\]"),
                   re.compile(r"OS error (?:code )?(\d+)"), re.compile(r"error code: (\d+)"),
                   re.compile(r"os_error_code='?(\d+)"))  # tensorstore's status payload
_NAME_PATTERNS = (re.compile(r"\bname = '([^']*)'"), re.compile(r"filename = '([^']*)'"),
                  re.compile(r'local file "([^"]*)"'), re.compile(r"'(/[^']*)'"))
_MESSAGES = {errno_lib.ENOSPC: "No space left on device", errno_lib.EROFS:
             "Read-only file system", errno_lib.EACCES: "Permission denied"}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def os_failure(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, path or None) of the OS failure behind `exc`, or None if it is not one."""
    for e in _chain(exc):
        text = str(e)
        name = next((n.group(1) for p in _NAME_PATTERNS if (n := p.search(text))), None)
        if isinstance(e, OSError) and e.errno:
            return e.errno, (os.fspath(e.filename) if e.filename is not None else name)
        for pat in _ERRNO_PATTERNS:
            m = pat.search(text)
            if m and int(m.group(1)):
                return int(m.group(1)), name
    return None


def strerror(code: int) -> str:
    return _MESSAGES.get(code) or os.strerror(code)


def describe(exc: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """`<path>: <errno meaning>` for an OS failure (`path` if the error names none)."""
    found = os_failure(exc)
    if found is None:
        return None
    code, name = found
    where = name or (os.fspath(path) if path is not None else None)
    return f"{where}: {strerror(code)}" if where else strerror(code)
