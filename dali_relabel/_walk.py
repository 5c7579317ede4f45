"""Walking a folder tree fast and safely: the listing under image folders and ``.pt`` trees.

``os.scandir`` with plain strings (no path object per file: 1.28 M ImageNet files are
listed in about a second) and the file type from the directory entry, so only folders
cost a ``stat``. Symlinked folders are followed, as torchvision's ImageFolder follows
them, except where that would list files twice or forever: a link back to a folder it
sits in (a loop) is an error naming the link, and a link to another folder of the same
tree is not followed (a warning names it). Names that are not UTF-8 cannot become keys
and are an error naming the file in its ``os.fsdecode`` form.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from dali_relabel.errors import DaliRelabelWarning, NotFoundError, TreeError

__all__ = ["walk_tree"]


def _check_name(path: str, root: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise TreeError(
            f"{path!r} under {root!r} has a name that is not valid UTF-8 (its bytes: "
            f"{os.fsencode(path)!r}); keys of label maps are UTF-8. Rename it, e.g. with "
            "`convmv -f latin1 -t utf8 --notest -r`"
        ) from None


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_tree(root: str | os.PathLike, suffixes: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Every folder under ``root`` with the files in it whose names end with ``suffixes``.

    Returns ``(folder relative to root with "/", sorted file names)`` for each folder
    visited, ``""`` for ``root`` itself, in no particular order (callers sort).

    Args:
        root: the top folder.
        suffixes: file name endings to list, compared case-insensitively.
    """
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise NotFoundError(f"{top!r} does not exist or is not a folder")
    ends = tuple(s.lower() for s in suffixes)
    top_real = os.path.realpath(top)
    st = os.stat(top)
    stack: list[tuple[str, str, tuple[tuple[int, int], ...]]] = [
        (top, "", ((st.st_dev, st.st_ino),))
    ]
    out: list[tuple[str, list[str]]] = []
    not_followed: list[str] = []
    while stack:
        folder, rel, ancestors = stack.pop()
        names = []
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if entry.is_dir():
                    if not name.isascii():
                        _check_name(entry.path, top)
                    st = entry.stat()  # the target's, for a symlink
                    ident = (st.st_dev, st.st_ino)
                    if ident in ancestors:
                        raise TreeError(
                            f"directory loop: {entry.path!r} leads back to "
                            f"{os.path.realpath(entry.path)!r}, a folder it is in; remove the "
                            "link (or replace it with the files it should show)"
                        )
                    if entry.is_symlink() and _inside(os.path.realpath(entry.path), top_real):
                        not_followed.append(entry.path)  # its files are listed where they are
                        continue
                    sub = f"{rel}/{name}" if rel else name
                    stack.append((entry.path, sub, (*ancestors, ident)))
                elif name.lower().endswith(ends) and entry.is_file():
                    if not name.isascii():
                        _check_name(entry.path, top)
                    names.append(name)
        names.sort()
        out.append((rel, names))
    if not_followed:
        warnings.warn(
            f"{len(not_followed):,} symlinked folders under {top!r} point to other folders of the "
            f"same tree and were not followed, so that no file is listed twice (first: "
            f"{not_followed[0]!r})",
            DaliRelabelWarning,
            stacklevel=3,
        )
    return out
