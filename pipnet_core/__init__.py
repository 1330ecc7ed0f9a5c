"""pipnet_core: PIPNet (Jin, Liao & Shao) for pipstc — model, targets, decode, training, metrics.

Importing the package is cheap: only :mod:`pipnet_core.schemes` (numpy) is loaded eagerly, so that
``annotations`` can use schemes without importing torch. Import submodules for the model.
"""

from pipnet_core.schemes import BUILTIN_SCHEMES, Scheme, SchemeError, get_scheme, load_scheme

__all__ = ["BUILTIN_SCHEMES", "Scheme", "SchemeError", "get_scheme", "load_scheme"]
