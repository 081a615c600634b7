"""dployr-agent: the dployr v1 API on one server, running apps as supervised processes or containers."""

# The package's version: pyproject.toml reads it from here (setuptools dynamic version), so the
# agent never needs importlib.metadata (and its zipfile and email imports) at run time.
__version__ = "0.1.0"

__all__ = ["__version__"]
