"""erank: this repository's reranker as one importable package, for programs that live elsewhere.

    pip install -e /path/to/erank         # once; installs the name `erank` and nothing else
    from erank import Reranker
    rr = Reranker()                       # the built-in reranker (or Reranker("path/to/checkpoint"))
    rr.rerank("how do I list files?", ["ls lists directory contents", "Paris is in France"])
    rr.rerank_many([{"query": "...", "documents": [...]}, ...])
    import erank.model, erank.eval        # any file of the repository, by its path: erank.data.beir

The scripts are flat files that import each other by short names (`import model`, `from data.beir
import ...`), which is what keeps `python rerank.py` working from a clone. Put on sys.path as
they are, those names (model, data, eval, training, tools, ...) would collide with a program's
own modules of the same names. This package loads the same files under its own name instead:
a finder on sys.meta_path serves erank.<name> from the repository root, and every module it
loads gets its own `__import__` that reads a short name of the repository as erank.<name>. The
program's `import model` still finds the program's own module, and the repository's files are
not changed for it. The install is editable only: the package runs the files of the clone.
"""
import builtins
import importlib.abc
import importlib.machinery
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if not os.path.isfile(os.path.join(ROOT, "rerank.py")):
    raise ImportError(f"erank: no rerank.py in {ROOT}; install it from a clone in editable mode: "
                      "pip install -e /path/to/erank")

# the repository's top-level modules and packages: the short names its files import each other by
LOCAL = {n[:-3] for n in os.listdir(ROOT) if n.endswith(".py")} | {
    n for n in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, n, "__init__.py")) and n != __name__}


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    """builtins.__import__, except that a short name of the repository means erank.<name>."""
    top = name.partition(".")[0]
    if level != 0 or top not in LOCAL:
        return builtins.__import__(name, globals, locals, fromlist, level)
    module = builtins.__import__(f"{__name__}.{name}", globals, locals, fromlist, 0)
    if not fromlist:  # `import data.beir` binds the name `data`: erank.data, not erank
        return sys.modules[f"{__name__}.{top}"]
    return module


_BUILTINS = dict(vars(builtins), __import__=_import)


class _Loader(importlib.machinery.SourceFileLoader):
    def exec_module(self, module):
        module.__builtins__ = _BUILTINS  # the module's import statements go through _import
        super().exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds erank.<name> (and erank.<package>.<name>) among the repository's files."""

    def find_spec(self, fullname, path, target=None):
        prefix = __name__ + "."
        if not fullname.startswith(prefix) or fullname[len(prefix):].partition(".")[0] not in LOCAL:
            return None
        inside = fullname[len(prefix):]
        search = [ROOT] if "." not in inside else path  # a top-level file, or inside its package
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _Loader(fullname, spec.origin)
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())

from erank.rerank import InputError, Reranker  # noqa: E402  (loaded through the finder above)

__all__ = ["Reranker", "InputError"]
