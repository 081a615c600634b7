"""What a deploy may fetch: validation of git remotes, branch names and credentials.

Everything here is pure (no I/O) and runs before any process is started, so a rejected value
runs nothing. Failures are ``InvalidRequest`` naming the field (``remote``, ``branch``,
``credentials``) so the API answers 400 with them.

Rules for a remote:

* ASCII printable only (no spaces, no control characters, none percent-encoded either), at most
  2048 characters, never starting with ``-``;
* no transport helpers (``ext::``, ``fd::``, any ``<name>::<address>``);
* a URL ``scheme://`` whose scheme is allowed by ``[deploy] allowed_schemes``, or the scp-like
  ``user@host:path`` form, which is ssh;
* host and user names that do not start with ``-`` (``ssh://-oProxyCommand=...``), hosts that
  are DNS names or bracketed IPv6 addresses, numeric ports;
* ``file://`` with an absolute path on this machine only; no query or fragment.

Credentials written into an http(s) URL (``https://user:token@host/...``) are moved out of it:
``Remote.url`` never holds a secret, so it is safe to log, store and show.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import field, replace
from urllib.parse import unquote

from agent.errors import InvalidRequest
from agent.records import record

__all__ = [
    "GitCredentials",
    "Remote",
    "validate_branch",
    "validate_credentials",
    "validate_remote",
]

MAX_URL_LENGTH = 2048
MAX_BRANCH_LENGTH = 200

_TRANSPORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:\[\]]+|\[[0-9A-Fa-f:.]+\]):(?P<path>.+)$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
_USER = re.compile(r"^[A-Za-z0-9._~+][A-Za-z0-9._~+-]*$")
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff])")
_BRANCH_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


@record
class GitCredentials:
    """Secrets for a private repository. Never in argv, logs, errors or release.json.

    ``password`` is an https password or access token (``username`` defaults to
    ``x-access-token``, which GitHub expects; GitLab and Gitea accept any name with a token).
    ``ssh_key`` is the text of a private key for ssh remotes.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssh_key: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for scrubbing text that might echo one.

        A username alone may be a token (``https://<token>@github.com/...``), so it counts as
        a secret when there is no password; next to a password it is an ordinary name.
        """
        user = self.username if self.password is None else None
        return tuple(s for s in (self.password, self.ssh_key, user) if s)


@record
class Remote:
    """A validated git remote. ``url`` holds no secret; ``credentials`` are kept apart."""

    url: str
    scheme: str
    host: str
    credentials: GitCredentials | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return self.url

    def with_credentials(self, credentials: GitCredentials | None) -> Remote:
        """This remote with ``credentials`` (validated against the scheme) replacing any."""
        if credentials is None:
            return self
        validate_credentials(credentials, self.scheme)
        return replace(self, credentials=credentials)


def _bad(issue: str, field_name: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{field_name}'", field=field_name, issue=issue)


def _check_host(host: str, field_name: str) -> str:
    if host.startswith("-"):
        raise _bad("Host must not start with '-'", field_name)
    if not (_HOSTNAME.match(host) or _IPV6.match(host)):
        raise _bad("Host is not a valid host name", field_name)
    return host.lower()


def _check_user(user: str, field_name: str) -> None:
    if not _USER.match(user):
        raise _bad("User name is not valid (letters, digits, '._~+-', not starting with '-')",
                   field_name)


def _check_path(path: str, field_name: str) -> None:
    if not path.strip("/"):
        raise _bad("The remote names no repository path", field_name)
    if path.lstrip("/").startswith("-"):
        raise _bad("Repository path must not start with '-'", field_name)


def _parse_url(scheme: str, rest: str, field_name: str) -> Remote:
    netloc, slash, path = rest.partition("/")
    path = slash + path
    if "?" in path or "#" in path or "?" in netloc or "#" in netloc:
        raise _bad("Query strings and fragments are not allowed in a remote", field_name)
    if scheme == "file":
        if netloc not in ("", "localhost"):
            raise _bad("file:// remotes must name a path on this machine", field_name)
        _check_path(path, field_name)
        return Remote(url=f"file://{path}", scheme="file", host="")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo = ""
    port = ""
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host += "]"
        if tail and not tail.startswith(":"):
            raise _bad("Host is not a valid host name", field_name)
        port = tail[1:]
    else:
        host, _, port = hostport.partition(":")
    host = _check_host(host, field_name)
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise _bad("Port must be a number between 1 and 65535", field_name)
    _check_path(path, field_name)
    user, colon, password = userinfo.partition(":")
    credentials: GitCredentials | None = None
    hostpart = host + (f":{port}" if port else "")
    if scheme in ("http", "https"):
        if user or colon:
            credentials = GitCredentials(username=unquote(user) or None,
                                         password=unquote(password) or None)
        url = f"{scheme}://{hostpart}{path}"
    elif scheme == "ssh":
        if colon:
            raise _bad("ssh remotes authenticate with a key, not a password in the URL",
                       field_name)
        if user:
            _check_user(user, field_name)
        url = f"ssh://{user + '@' if user else ''}{hostpart}{path}"
    else:
        if userinfo:
            raise _bad(f"{scheme}:// remotes take no user name", field_name)
        url = f"{scheme}://{hostpart}{path}"
    return Remote(url=url, scheme=scheme, host=host, credentials=credentials)


def validate_remote(url: str, allowed_schemes: Iterable[str], *, field_name: str = "remote") -> Remote:
    """The validated ``Remote`` for ``url``; ``InvalidRequest`` naming ``field_name`` otherwise."""
    allowed = {s.lower() for s in allowed_schemes}
    if not isinstance(url, str) or not url:
        raise _bad("A git remote URL is required", field_name)
    if len(url) > MAX_URL_LENGTH:
        raise _bad(f"Remote is longer than {MAX_URL_LENGTH} characters", field_name)
    if any(not 0x21 <= ord(c) < 0x7F for c in url) or _ENCODED_CONTROL.search(url):
        raise _bad("Remote contains spaces, control or non-ASCII characters", field_name)
    if url.startswith("-"):
        raise _bad("Remote must not start with '-'", field_name)
    if _TRANSPORT.match(url):
        raise _bad("Git transport helpers ('<transport>::<address>') are not allowed", field_name)
    match = _SCHEME.match(url)
    if match:
        scheme = match.group(1).lower()
        if scheme not in allowed:
            raise _bad(f"Scheme '{scheme}' is not allowed; allowed: {', '.join(sorted(allowed))}",
                       field_name)
        return _parse_url(scheme, match.group(2), field_name)
    scp = _SCP.match(url)
    if scp is None:
        raise _bad("Not a git URL: use scheme://host/path or user@host:path", field_name)
    if "ssh" not in allowed:
        raise _bad(f"Scheme 'ssh' is not allowed; allowed: {', '.join(sorted(allowed))}", field_name)
    user, host, path = scp.group("user"), scp.group("host"), scp.group("path")
    if user:
        _check_user(user, field_name)
    host = _check_host(host, field_name)
    _check_path(path, field_name)
    return Remote(url=f"{user + '@' if user else ''}{host}:{path}", scheme="ssh", host=host)


def validate_branch(branch: str, *, field_name: str = "branch") -> str:
    """``branch`` if it is a valid branch name by ``git check-ref-format`` rules; else 400.

    Also refuses a leading ``-`` (it would read as an option) and names over 200 characters.
    """
    if not isinstance(branch, str) or not branch:
        raise _bad("A branch name is required", field_name)
    if len(branch) > MAX_BRANCH_LENGTH:
        raise _bad(f"Branch name is longer than {MAX_BRANCH_LENGTH} characters", field_name)
    if branch.startswith("-"):
        raise _bad("Branch name must not start with '-'", field_name)
    problems = (
        _BRANCH_FORBIDDEN.search(branch) is not None,
        ".." in branch, "@{" in branch, "//" in branch, branch == "@",
        branch.startswith("/"), branch.endswith(("/", ".")),
        any(part.startswith(".") or part.endswith(".lock") for part in branch.split("/")),
        any(ord(c) > 0x7E for c in branch),
    )
    if any(problems):
        raise _bad("Not a valid git branch name (see git check-ref-format)", field_name)
    return branch


def validate_credentials(credentials: GitCredentials, scheme: str,
                         *, field_name: str = "credentials") -> GitCredentials:
    """``credentials`` if they suit a remote of ``scheme``; else 400 naming ``field_name``.

    The message never echoes a value.
    """
    if credentials.ssh_key is not None:
        if scheme != "ssh":
            raise _bad("An ssh key is only used with ssh remotes", f"{field_name}.ssh_key")
        if "PRIVATE KEY-----" not in credentials.ssh_key or "\x00" in credentials.ssh_key:
            raise _bad("Not a PEM/OpenSSH private key", f"{field_name}.ssh_key")
    if credentials.password is not None and scheme not in ("http", "https"):
        raise _bad("A password or token is only used with http(s) remotes", f"{field_name}.password")
    for name in ("username", "password"):
        value = getattr(credentials, name)
        if value is not None and (not value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)):
            raise _bad("Must be non-empty, without control characters", f"{field_name}.{name}")
    return credentials
