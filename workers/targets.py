"""A user's own factory or loader, named in a config by ``_target_: package.module.name``.

The Hydra convention: the dotted path names a callable, the config's other keys are
its keyword arguments. Here the path is imported and the keywords are checked against
the callable's signature before anything runs, so a typo is one clear message naming
the key, never a traceback from inside a worker. Nothing is instantiated here.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable


class TargetError(ValueError):
    """A ``_target_`` that cannot be used; the message names the key and the fix."""


def add_import_paths(paths: list[str] | None) -> None:
    """Put ``paths`` (folders with a user's modules, e.g. the ``--config-dir``) first on the
    import path of this process, once each."""
    for path in reversed(paths or []):
        if path not in sys.path:
            sys.path.insert(0, path)


def import_target(target, *, where: str) -> Callable:
    """The callable that ``target`` ("package.module.name") names.

    >>> import_target("workers.models.vgg11", where="arch._target_").__name__
    'vgg11'
    """
    if not isinstance(target, str) or "." not in target.strip("."):
        raise TargetError(f"{where}={target!r} is not allowed: it must be a dotted path package.module.name")
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TargetError(
            f"{where}={target}: module {module_name} cannot be imported ({err}); put the folder that holds it "
            "on PYTHONPATH or in runtime.pythonpath (sweep --config-dir DIR adds DIR)"
        ) from None
    except Exception as err:  # the user's module raised while importing
        raise TargetError(f"{where}={target}: importing {module_name} failed: {type(err).__name__}: {err}") from None
    found = getattr(module, name, None)
    if found is None:
        raise TargetError(f"{where}={target}: module {module_name} has no {name!r}")
    if not callable(found):
        raise TargetError(f"{where}={target}: {name} is a {type(found).__name__}, not a function or class")
    return found


def check_keywords(function: Callable, given: dict, *, where: str, supplied: tuple[str, ...] = ()) -> None:
    """Raise TargetError unless ``function`` accepts every key of ``given`` as a keyword
    and ``given`` plus ``supplied`` (what the caller always passes) cover its required ones.

    >>> def f(*, num_classes, width=1.0): ...
    >>> check_keywords(f, {"widht": 2}, where="arch", supplied=("num_classes",))
    Traceback (most recent call last):
    ...
    workers.targets.TargetError: arch.widht is not a keyword argument of f; it takes: width
    """
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return  # a builtin without a signature: checked when called
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {p.name: p for p in parameters.values() if p.kind in kinds}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    own = getattr(function, "__qualname__", repr(function))
    for key in supplied:
        if key not in named and not takes_any:
            raise TargetError(f"{where}: {own} must accept the keyword argument {key}= (it is always passed)")
    for key in given:
        if key not in named and not takes_any:
            options = ", ".join(k for k in named if k not in supplied) or "no other keywords"
            raise TargetError(f"{where}.{key} is not a keyword argument of {own}; it takes: {options}")
    missing = [k for k, p in named.items() if p.default is inspect.Parameter.empty and k not in given
               and k not in supplied]
    if missing:
        keys = ", ".join(f"{where}.{k}" for k in missing)
        raise TargetError(f"{where}: {own} needs {', '.join(missing)}; set {keys}")
