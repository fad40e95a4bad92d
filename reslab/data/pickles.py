"""Pickles read without running code: dataset files come from the internet or from whoever filled the
data folder, and a plain ``pickle.load`` runs whatever function a file names.

Only the globals the official CIFAR "python version" files need can be built: numpy arrays (their
reconstruct helper, ``ndarray``, ``dtype``, numpy scalars) and ``_codecs.encode`` (how protocol-2 pickles
spell bytes). Dicts, lists, str, bytes and numbers need no global at all.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

_RECONSTRUCT, _, _ = np.ndarray((0,)).__reduce__()  # numpy's own helper, whatever module it lives in
_SCALAR = np.int64(0).__reduce__()[0]

# Files written under numpy 1 name numpy.core; numpy 2 writes numpy._core. Both mean the same helpers.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class outside ``ALLOWED``."""


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None


def load_data_pickle(path: Path, what: str) -> Any:
    """The object in ``path``, built from data types only (``what`` names the format in errors).
    Python 2 strings come back as bytes, as the official CIFAR files need."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the {what} folder") from None
    except RefusedGlobal as exc:
        raise DataError(f"{path}: refused to open: the pickle asks to run {exc}, which no {what} file "
                        "holds (a hostile or foreign file)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise DataError(f"{path}: truncated or corrupt {what} pickle ({type(exc).__name__})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
