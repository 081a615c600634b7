"""Import aiohttp without parsing the system's whole CA bundle, twice, at start.

aiohttp builds its two default client SSL contexts when it is imported, and each asks OpenSSL
for the default verify paths: OpenSSL then parses every certificate of the CA bundle (about
140 on Debian) into memory, roughly 1 MB per context, before the agent has made, or may ever
make, an HTTPS request (webhooks and the control-plane link are its only HTTPS clients).

Where the system also keeps those certificates as a hashed directory (OpenSSL's ``c_rehash``
layout: ``/etc/ssl/certs`` on Debian and Ubuntu, maintained by update-ca-certificates next to
the bundle it builds from the same sources), ``import_aiohttp`` has aiohttp's contexts use
that directory instead. OpenSSL then reads a CA certificate from it when a chain needs one,
by subject hash: the same trust, loaded on demand. Contexts created later (the upstream
link's, for instance) are untouched.

Nothing changes when ``SSL_CERT_FILE`` names another bundle than the system's (the operator
chose one), or when there is no hashed directory: aiohttp is then imported as it always is.
"""

from __future__ import annotations

import os
import re
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["hashed_ca_directory", "import_aiohttp"]

# c_rehash names: the subject hash, a dot, a sequence number ("5ad8a5d6.0")
_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.\d+$")


def hashed_ca_directory() -> str | None:
    """The directory OpenSSL would search by subject hash (``SSL_CERT_DIR`` or its default),
    if it holds hashed certificates and the bundle is the system's own (``SSL_CERT_FILE``
    unset, or naming that same file); else None."""
    paths = ssl.get_default_verify_paths()
    chosen = os.environ.get(paths.openssl_cafile_env)
    if chosen and os.path.realpath(chosen) != os.path.realpath(paths.openssl_cafile):
        return None  # another bundle than the system's: its certificates may not be hashed
    capath = paths.capath
    if not capath:
        return None
    try:
        with os.scandir(capath) as entries:
            if any(_HASHED_NAME.match(entry.name) for entry in entries):
                return capath
    except OSError:
        pass
    return None


def import_aiohttp() -> None:
    """Import aiohttp (once per process) with its default contexts trusting the hashed CA
    directory, when there is one (see the module docstring)."""
    if "aiohttp" in sys.modules:
        return  # too late to matter, and nothing to undo
    capath = hashed_ca_directory()
    if capath is None:
        import aiohttp
        return
    with _verify_paths_from(capath):
        import aiohttp  # noqa: F401


@contextmanager
def _verify_paths_from(capath: str) -> Iterator[None]:
    """While active, ``SSLContext.set_default_verify_paths`` (what ``load_default_certs`` and
    ``create_default_context`` call) adds only ``capath`` as a lookup directory."""

    def set_default_verify_paths(self: ssl.SSLContext) -> None:
        self.load_verify_locations(capath=capath)

    original: Any = ssl.SSLContext.__dict__.get("set_default_verify_paths")
    ssl.SSLContext.set_default_verify_paths = set_default_verify_paths  # type: ignore[method-assign]
    try:
        yield
    finally:
        if original is None:
            del ssl.SSLContext.set_default_verify_paths
        else:  # pragma: no cover - CPython defines it on _ssl._SSLContext, not on SSLContext
            ssl.SSLContext.set_default_verify_paths = original  # type: ignore[method-assign]
