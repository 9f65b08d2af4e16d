"""A reload runs the handler code as it is on disk now, or nothing changes.

Workers are forked from the supervisor and run the modules it imported. Python keeps a module
once imported, so reading the configuration again would hand the workers started after a
SIGHUP the old code. `load_fresh` first forgets the running handlers' modules and every module
whose source sits in the same directories or below (the helpers they import), so that loading
the file imports them afresh. If the file or the new code does not load, the forgotten modules
are put back: the running configuration stays whole, down to an import a handler makes inside
a job.

Never forgotten: workerhost itself, and installed libraries beside the handlers (the standard
library, site-packages, a virtualenv inside the project). They are not edited in place, and a
second copy of one would split what the running host holds (exception classes, connection
pools) from what new code sees. A handler package installed with pip is imported anew like
any other, with the modules of its own directory.
"""

from __future__ import annotations

import importlib
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from workerhost.config.load import load_config
from workerhost.config.settings import Config

_WORKERHOST = Path(__file__).resolve().parent
_INSTALLED = tuple(
    Path(p).resolve() for p in {sysconfig.get_path(name) for name in
                                ("stdlib", "platstdlib", "purelib", "platlib")} if p
)
_INSTALLED_PARTS = {"site-packages", "dist-packages"}


def load_fresh(path: str | Path, running: Config) -> Config:
    """Load `path`, importing its handler modules anew; ConfigError leaves sys.modules as it
    was."""
    forgotten = forget(stale_modules(running))
    importlib.invalidate_caches()  # a module file added since the last import is found
    try:
        return load_config(path)
    except BaseException:
        sys.modules.update(forgotten)
        raise


def handler_modules(config: Config) -> set[str]:
    """The modules named by the `python:` handlers of `config`."""
    return {h.python.partition(":")[0] for h in config.handlers.values() if h.python}


def stale_modules(config: Config) -> list[str]:
    """Names of the modules a reload of `config` imports anew: its handler modules and the
    modules beside or below them."""
    handlers = handler_modules(config)
    dirs = set()
    for name in handlers:
        file = _source(sys.modules.get(name))
        # A handler module at the top of site-packages keeps its neighbours: they are installed.
        if file is not None and file.parent not in _INSTALLED:
            dirs.add(file.parent)
    return sorted(
        name for name, module in list(sys.modules.items())
        if name != "__main__" and _reloadable(_source(module))
        and (name in handlers or _beside(_source(module), dirs))
    )


def forget(names: Iterable[str]) -> dict[str, ModuleType]:
    """Drop `names` from sys.modules; what was dropped, to put back."""
    return {name: sys.modules.pop(name) for name in names if name in sys.modules}


def _source(module: ModuleType | None) -> Path | None:
    """The .py file a module was loaded from (None for builtins, extensions, namespaces)."""
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    return Path(file).resolve()


def _reloadable(file: Path | None) -> bool:
    """Loaded from a .py file, and not part of workerhost."""
    return file is not None and _WORKERHOST != file.parent and _WORKERHOST not in file.parents


def _beside(file: Path | None, dirs: set[Path]) -> bool:
    """In or below one of `dirs`, and not in a site-packages there (a virtualenv inside a
    project directory)."""
    if file is None:
        return False
    return any((d == file.parent or d in file.parents)
               and not _INSTALLED_PARTS.intersection(file.relative_to(d).parts) for d in dirs)
