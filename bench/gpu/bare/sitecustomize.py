"""Makes this interpreter look like the lent GPU machine's: no DALI, no ffcv (the rehearsal,
`python -m bench.gpu.lent --rehearse`, puts this folder first on PYTHONPATH, so the suite and every
child it starts load it at start-up). Importing either fails with ModuleNotFoundError naming the
rehearsal, and importlib.metadata no longer lists their distributions, so the environment phase
reports them missing as the lent machine will."""
import importlib.abc
import sys
from importlib import metadata

HIDDEN_MODULES = ("ffcv", "nvidia.dali")
HIDDEN_DISTRIBUTIONS = ("ffcv", "nvidia-dali")  # names starting with these (nvidia-dali-cuda130, ...)
WHY = "hidden by the rehearsal: the lent GPU machine has no DALI and no ffcv"


def _hidden_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in HIDDEN_MODULES)


def _hidden_distribution(name: str) -> bool:
    name = (name or "").lower().replace("_", "-")
    return any(name.startswith(d) for d in HIDDEN_DISTRIBUTIONS)


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _hidden_module(name):
            raise ModuleNotFoundError(f"No module named {name!r} ({WHY})", name=name)
        return None


def _distributions(_real=metadata.distributions):
    def distributions(**kwargs):
        return (d for d in _real(**kwargs) if not _hidden_distribution(d.metadata["Name"]))
    return distributions


def _refusing(_real):
    def lookup(name, *args, **kwargs):
        if _hidden_distribution(name):
            raise metadata.PackageNotFoundError(name)
        return _real(name, *args, **kwargs)
    return lookup


for _name in [m for m in sys.modules if _hidden_module(m)]:  # nothing imports them before this, but be sure
    del sys.modules[_name]
sys.meta_path.insert(0, _Hide())
metadata.distributions = _distributions()
metadata.distribution, metadata.version, metadata.metadata = (_refusing(metadata.distribution),
                                                              _refusing(metadata.version),
                                                              _refusing(metadata.metadata))
