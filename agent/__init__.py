"""dployr-agent: the dployr v1 API on one server, running apps as processes or containers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dployr-agent")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
