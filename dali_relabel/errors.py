"""Exceptions of dali_relabel.

Every error raised on purpose derives from :class:`DaliRelabelError` and also from the
builtin a caller would catch without knowing this library (zarr's ``errors.py`` does the
same: ``NodeNotFoundError(FileNotFoundError)``), so ``except ValueError`` keeps working
and ``except DaliRelabelError`` catches everything the library means to say. The
command line prints these as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ClassTableError",
    "DaliRelabelError",
    "DaliRelabelWarning",
    "ImageDecodeError",
    "KeyNotFoundError",
    "LabelMapFormatError",
    "LoaderStateError",
    "MissingDependencyError",
    "NotFoundError",
    "SampleIndexError",
    "StorageAccessError",
    "StoreCorruptError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "TableCacheError",
    "TeacherError",
    "TreeError",
]


class DaliRelabelError(Exception):
    """Base class of every error raised on purpose by dali_relabel."""


# -- arguments ------------------------------------------------------------------------
class ArgumentError(DaliRelabelError, ValueError):
    """An argument whose value is outside what is accepted; the message names both."""


class ArgumentTypeError(DaliRelabelError, TypeError):
    """An argument of a type that is not accepted."""


class SampleIndexError(DaliRelabelError, IndexError):
    """A sample index outside a store's or a dataset's range."""


class KeyNotFoundError(DaliRelabelError, KeyError):
    """A sample key that a label-map store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(DaliRelabelError, ImportError):
    """An optional package that a feature needs is not installed; the message says which
    extra of dali_relabel brings it (``pip install 'dali_relabel[cuda13]'``)."""


# -- files and folders ----------------------------------------------------------------
class NotFoundError(DaliRelabelError, FileNotFoundError):
    """A file or folder that a call needs does not exist or holds nothing usable."""


class StoreNotFoundError(NotFoundError):
    """A path or URL that should hold a label-map store does not."""


class StorageAccessError(DaliRelabelError, OSError):
    """Object storage (S3) that cannot be reached or refuses a request: a wrong endpoint,
    missing credentials, a bucket that does not exist, access denied."""


class TableCacheError(DaliRelabelError, OSError):
    """The node-local cache of decoded label tables has no room, or its lock is stuck."""


class ClassTableError(DaliRelabelError, ValueError):
    """Class folders that a class table (``class_names``) does not list."""


class TreeError(DaliRelabelError, ValueError):
    """A folder tree that cannot be listed as it is: a directory loop, a file name that
    is not UTF-8."""


class ImageDecodeError(DaliRelabelError, RuntimeError):
    """An image that cannot be decoded."""


class LoaderStateError(DaliRelabelError, ValueError):
    """A loader state (``load_state_dict``) that another loader wrote: other seed, world
    size, dataset or batch size, whose batches would not continue the interrupted epoch."""


# -- label-map stores -----------------------------------------------------------------
class StoreIncompleteError(DaliRelabelError, ValueError):
    """A store whose writing has not finished (an interrupted conversion)."""


class StoreMismatchError(DaliRelabelError, ValueError):
    """A store that does not fit what it is used with (other parameters, other keys), or
    whose attributes contradict its own arrays."""


class StoreCorruptError(DaliRelabelError, ValueError):
    """Store data that is missing or damaged: a shard file deleted or cut short, a chunk
    whose checksum does not match, a metadata document that does not parse.

    Attributes:
        path: the file (or URL) that is missing or damaged.
        kind: "missing", "corrupt" or "undecodable".
    """

    def __init__(self, message: str, *, path: str = "", kind: str = "corrupt") -> None:
        super().__init__(message)
        self.path = path
        self.kind = kind


class LabelMapFormatError(DaliRelabelError, ValueError):
    """A label-map file (official ``.pt`` or dense map) that is malformed."""


class DaliRelabelWarning(UserWarning):
    """Something a user should know that does not stop the work: a store of an older
    format, label maps recomputed because their images changed."""


class TeacherError(DaliRelabelError, ValueError):
    """A teacher that cannot be built: an unknown name, weights that do not fit the
    model, or a model that cannot be made fully convolutional."""
