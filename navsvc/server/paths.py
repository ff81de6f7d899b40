"""Server-side paths confined to configured roots.

A client may name a file on the server only if, after resolving every symlink and ``..``,
it lies inside one of the roots in ``[paths] roots``. ``..`` components are refused outright
(even when they would stay inside), so a request never depends on the server's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from navsvc.errors import InputError, PermissionDenied


def confine(path_text: str, roots: Sequence[Path], what: str) -> Path:
    """Return the resolved path of ``path_text`` if it is an existing file (or folder, for a
    DICOM series) inside one of ``roots``.

    Raises :class:`InputError` for an empty, relative-with-``..`` or missing path and
    :class:`PermissionDenied` for a path outside every root (symlinks resolved first).
    """
    if not path_text:
        raise InputError(f"{what}: expected a server path or an upload id, got nothing")
    if "\x00" in path_text:
        raise InputError(f"{what}: the path contains a NUL character")
    raw = Path(path_text)
    if ".." in raw.parts:
        raise PermissionDenied(f"{what}: '..' is not allowed in server paths, got {path_text!r}")
    if not roots:
        raise PermissionDenied(
            f"{what}: server-side paths are disabled (no [paths] roots configured); upload the file instead"
        )
    resolved_roots = [r.resolve() for r in roots]
    candidates = [raw] if raw.is_absolute() else [r / raw for r in resolved_roots]
    for cand in candidates:
        real = cand.resolve()
        inside = any(real == r or real.is_relative_to(r) for r in resolved_roots)
        if not inside:
            if cand.exists() or cand.is_symlink():
                raise PermissionDenied(
                    f"{what}: {path_text!r} resolves to {real}, outside the allowed roots "
                    f"{[str(r) for r in resolved_roots]}"
                )
            continue
        if real.exists():
            return real
    if raw.is_absolute() and not any(
        raw.resolve().is_relative_to(r) for r in resolved_roots
    ):
        raise PermissionDenied(
            f"{what}: {path_text!r} is outside the allowed roots {[str(r) for r in resolved_roots]}"
        )
    raise InputError(f"{what}: file not found on the server: {path_text!r}")
