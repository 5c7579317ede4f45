"""Optional dependencies: a clear error naming the extra to install when one is missing.

The core install (the loader's and the store's needs) is lean; DALI comes with the extra
that matches the machine's CUDA (``[cuda12]``, ``[cuda13]``) and the pictures, sample
data and the default teacher with ``[tools]`` (README, "Install").
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dali_relabel.errors import MissingDependencyError

__all__ = ["DALI_EXTRAS", "require", "require_dali"]

#: How to get DALI, for messages.
DALI_EXTRAS = (
    "pip install 'dali_relabel[cuda13]' (NVIDIA driver for CUDA 13) or "
    "'dali_relabel[cuda12]' (CUDA 12 drivers; nvidia-smi shows the CUDA version)"
)


def require(module: str, *, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise MissingDependencyError naming the extra that brings it.

    Args:
        module: the module to import, e.g. "matplotlib".
        extra: the dali_relabel extra that installs it, e.g. "tools".
        needed_by: what needs it, for the message, e.g. "dali-relabel show".
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{needed_by} needs {module.split('.')[0]}, which is not installed ({e}); "
            f"install it with pip install 'dali_relabel[{extra}]'"
        ) from e


def require_dali(needed_by: str) -> ModuleType:
    """Import ``nvidia.dali``, or raise MissingDependencyError saying which extra to install."""
    try:
        return importlib.import_module("nvidia.dali")
    except ImportError as e:
        raise MissingDependencyError(
            f"{needed_by} needs NVIDIA DALI, which is not installed ({e}); {DALI_EXTRAS}"
        ) from e
