"""Names to paths under one root directory, never leading out of it.

A name is '/'-separated segments relative to the root. Absolute names, empty, '.' and '..' segments
are refused, and so is any path that a symlink leads out of the root: every path is resolved with
``realpath`` and must stay under the root's real path, and files are opened without following a
final symlink (``O_NOFOLLOW``) once that check passed, so a link swapped in afterwards fails too.
Files whose first segment starts with ``.l8`` belong to l8 (temporary uploads, metadata).
"""

from __future__ import annotations

import os
from pathlib import Path

from bridges.errors import InvalidArgument

RESERVED = ".l8"


class Root:
    def __init__(self, root: str, what: str) -> None:
        if not root:
            raise ValueError(f"{what}: metadata root is required: the directory that holds the files")
        self.path = Path(root).expanduser().absolute()
        self.what = what
        self.real = self.path  # resolved at open()

    def open(self) -> None:
        """Create the root if it is missing and remember its real path."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{self.what}: cannot create root {str(self.path)!r}: {exc.strerror or exc}") from None
        if not self.path.is_dir():
            raise ValueError(f"{self.what}: root {str(self.path)!r} is not a directory")
        self.real = Path(os.path.realpath(self.path))

    def inside(self, path: Path) -> bool:
        real = os.path.realpath(path)
        return real == str(self.real) or real.startswith(str(self.real) + os.sep)

    def path_of(self, name: str) -> Path:
        """Where ``name`` lives; InvalidArgument when it is malformed or a symlink leads out of the root."""
        if not name or name.startswith("/") or "\x00" in name:
            raise InvalidArgument(f"{self.what}: name {name[:64]!r} is empty, absolute or holds NUL")
        segments = name.split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise InvalidArgument(f"{self.what}: name {name[:64]!r} has an empty, '.' or '..' segment")
        path = self.real.joinpath(*segments)
        if not self.inside(path):
            raise InvalidArgument(f"{self.what}: name {name[:64]!r} leads out of the store's root through a symlink")
        return path

    def name_of(self, path: Path) -> str:
        return path.relative_to(self.real).as_posix()

    def is_reserved(self, name: str) -> bool:
        return name.split("/", 1)[0].startswith(RESERVED)
