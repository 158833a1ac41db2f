"""Finding codec plugins.

A plugin is one Python file; it names its codec in a module-level ``CODEC``
(an object implementing :class:`bankgate.codec.base.Codec`) and may name a
statement reader in ``STATEMENT``.  Plugins are found in the shipped
``plugins/`` folder and in every extra folder the configuration names.
A file whose name starts with ``_`` is not a plugin.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


class PluginError(Exception):
    pass


PACKAGE = "bankgate_plugins"


def _source_plugins() -> Path | None:
    """``plugins/`` beside the package when running from a source tree."""
    here = Path(__file__).resolve().parent.parent.parent / "plugins"
    return here if here.is_dir() else None


def shipped_dir() -> Path:
    """The shipped plugins: the source tree's ``plugins/`` or the installed copy."""
    src = _source_plugins()
    if src is not None:
        return src
    return Path(next(iter(_package().__path__))).resolve()


def module_name(path: Path) -> str:
    """The one module name of a plugin file: ``bankgate_plugins.<stem>``."""
    return f"{PACKAGE}.{Path(path).stem.replace('-', '_')}"


def _package() -> ModuleType:
    """The package ``bankgate_plugins``, so that a plugin's one module name
    resolves to the files the gateway loads: the installed package, or --
    running from a source tree -- a package whose path is ``plugins/``."""
    pkg = sys.modules.get(PACKAGE)
    if pkg is not None:
        return pkg
    src = _source_plugins()
    if src is None:
        try:
            return importlib.import_module(PACKAGE)
        except ImportError:
            raise PluginError(f"the shipped plugins ({PACKAGE}) are not installed") from None
    spec = importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(src)]
    pkg = importlib.util.module_from_spec(spec)
    pkg.__doc__ = "Bank message plugins, loaded by bankgate.codec.registry."
    sys.modules[PACKAGE] = pkg
    return pkg


def load_file(path: Path) -> ModuleType:
    """Load one plugin file under its one module name (:func:`module_name`).

    The same file loaded twice is the same module; another file with the same
    name (a plugin folder overriding a shipped plugin) replaces it.
    """
    path = Path(path).resolve()
    modname = module_name(path)
    loaded = sys.modules.get(modname)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
        return loaded
    pkg = _package()
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        if loaded is not None:
            sys.modules[modname] = loaded
        else:
            del sys.modules[modname]
        raise PluginError(f"{path}: failed to load: {e!r}") from e
    setattr(pkg, modname.rpartition(".")[2], module)
    return module


def discover(extra_dirs: list[str | Path] = ()) -> dict[str, object]:
    """name -> codec, for every plugin file found.  Later folders override."""
    found: dict[str, object] = {}
    for d in [shipped_dir(), *map(Path, extra_dirs)]:
        if not d.is_dir():
            raise PluginError(f"{d}: plugin folder does not exist")
        for f in sorted(d.glob("*.py")):
            if f.name.startswith("_"):
                continue
            module = load_file(f)
            codec = getattr(module, "CODEC", None)
            if codec is not None:
                found[codec.name] = codec
    return found


def load_codec(name: str, extra_dirs: list[str | Path] = ()):
    codecs = discover(extra_dirs)
    try:
        return codecs[name]
    except KeyError:
        raise PluginError(
            f"no plugin named {name!r} (found: {', '.join(sorted(codecs)) or 'none'})"
        ) from None
