"""Domain names and path prefixes of routes: validation into one canonical form.

Both proxies match on these canonical forms, so two spellings of one name can never become
two routes: domains are lower-case ASCII (IDNA 2008 A-labels via UTS #46 mapping) without a
trailing dot; path prefixes start with ``/``, have no empty, ``.`` or ``..`` segments and no
trailing ``/`` (except the root ``/``).
"""

from __future__ import annotations

import re

import idna

__all__ = [
    "MAX_PATH_PREFIX",
    "InvalidName",
    "host_of",
    "normalize_domain",
    "normalize_path_prefix",
    "path_has_prefix",
]

MAX_PATH_PREFIX = 1024

_LDH_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# RFC 3986 pchar minus '%' (encoded forms would need two spellings), '*' and '{}' (Caddy syntax).
_PATH = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=:@/-]*$")


class InvalidName(ValueError):
    """A domain or path prefix is not acceptable; the message says why, for users."""


def _encode_label(label: str) -> str:
    if label.isascii():
        label = label.lower()
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise InvalidName(f"'{label}' is not a valid internationalized label") from None
        if not _LDH_LABEL.match(label):
            raise InvalidName(f"'{label}' is not a valid label: use letters, digits and '-' "
                             "(not at either end), at most 63 characters")
        return label
    try:
        encoded = idna.encode(label, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise InvalidName(f"'{label}' is not a valid internationalized label") from None
    if not 1 <= len(encoded) <= 63:
        raise InvalidName(f"'{label}' is longer than 63 characters once encoded")
    return encoded


def normalize_domain(value: str) -> str:
    """The canonical ASCII form of a route's domain; raise InvalidName if it is not valid.

    Accepts unicode names (encoded with IDNA), upper case, a trailing dot, and one leading
    wildcard label ``*.`` that matches exactly one label (as in TLS certificates and Caddy).
    Refuses a wildcard anywhere else, empty labels, labels over 63 octets, names over 253
    octets and all-numeric top-level labels (IP addresses are not domain names).
    """
    name = value.strip()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    if not name:
        raise InvalidName("the domain is empty")
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[2:]
    labels = name.split(".")
    if any("*" in label for label in labels):
        raise InvalidName("a wildcard is allowed only as the whole first label, as in *.example.com")
    if any(not label for label in labels):
        raise InvalidName("the domain has an empty label")
    encoded = [_encode_label(label) for label in labels]
    if encoded[-1].isdigit():
        raise InvalidName("the last label cannot be all digits (IP addresses are not domains)")
    result = ".".join((["*"] if wildcard else []) + encoded)
    if len(result) > 253:
        raise InvalidName("the domain is longer than 253 characters")
    return result


def normalize_path_prefix(value: str) -> str:
    """The canonical form of a route's path prefix; raise InvalidName if it is not valid."""
    if not value.startswith("/"):
        raise InvalidName("the path prefix must start with '/'")
    if len(value) > MAX_PATH_PREFIX:
        raise InvalidName(f"the path prefix is longer than {MAX_PATH_PREFIX} characters")
    if not _PATH.match(value):
        raise InvalidName("the path prefix may contain only letters, digits and -._~!$&'()+,;=:@/ "
                         "(no percent-encoding, '*', '?' or '#')")
    segments = [s for s in value.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise InvalidName("the path prefix cannot contain '.' or '..' segments")
    return "/" + "/".join(segments)


def path_has_prefix(path: str, prefix: str) -> bool:
    """Whether a request path falls under a canonical prefix, segment-wise and ignoring case.

    ``/api`` covers ``/api`` and ``/api/x`` but not ``/apix``. Case is ignored because Caddy's
    path matcher ignores it, and both backends must route the same request the same way.
    """
    if prefix == "/":
        return True
    n = len(prefix)
    return path[:n].lower() == prefix.lower() and (len(path) == n or path[n] == "/")


def host_of(header: str) -> str:
    """The canonical host of a Host header: port, trailing dot and case removed.

    Returns ``""`` for something that is not a usable host name.
    """
    host = header.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower() if end > 0 else ""
    host = host.rpartition(":")[0] if ":" in host else host
    host = host.rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return normalize_domain(host)
    except InvalidName:
        return ""
