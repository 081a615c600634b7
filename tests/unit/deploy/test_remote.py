"""Validation of git remotes, branch names and credentials: pure rules, nothing runs."""

from __future__ import annotations

import pytest

from agent.deploy.remote import (
    GitCredentials,
    validate_branch,
    validate_credentials,
    validate_remote,
)
from agent.errors import InvalidRequest

DEFAULT = ("https", "ssh")
EVERYTHING = ("https", "ssh", "http", "git", "file")


@pytest.mark.parametrize(("url", "scheme", "host"), [
    ("https://github.com/user/repo", "https", "github.com"),
    ("https://GitHub.com:8443/user/repo.git", "https", "github.com"),
    ("ssh://git@github.com/user/repo.git", "ssh", "github.com"),
    ("ssh://git@[::1]:2222/srv/repo", "ssh", "[::1]"),
    ("git@github.com:user/repo.git", "ssh", "github.com"),
    ("github.com:user/repo.git", "ssh", "github.com"),
])
def test_accepts_ordinary_remotes(url: str, scheme: str, host: str) -> None:
    """https, ssh:// and scp-like remotes pass with the default schemes."""
    remote = validate_remote(url, DEFAULT)
    assert (remote.scheme, remote.host) == (scheme, host)


@pytest.mark.parametrize("url", [
    "http://example.com/repo", "git://example.com/repo", "file:///srv/repo",
])
def test_other_schemes_need_config(url: str) -> None:
    """http, git and file are refused by default and accepted when allowed."""
    with pytest.raises(InvalidRequest) as err:
        validate_remote(url, DEFAULT)
    assert err.value.details["field"] == "remote"
    assert "not allowed" in err.value.details["issue"]
    assert validate_remote(url, EVERYTHING).url == url


@pytest.mark.parametrize("url", [
    "--upload-pack=touch /tmp/marker",
    "-u touch /tmp/marker",
    "ext::sh -c touch% /tmp/marker",
    "ext::sh",
    "fd::17",
    "ssh://-oProxyCommand=touch%20marker/x",
    "ssh://-oProxyCommand=touch/x",
    "ssh://user@-oProxyCommand=x/repo",
    "ssh://-user@host/repo",
    "-oProxyCommand=touch:repo",
    "git@-oProxyCommand=x:repo",
    "git@host:-repo",
    "https://host/-repo",
    "https://host/repo\nfoo",
    "https://host/re po",
    "https://host/repo%0a",
    "https://host/repo%7F",
    "https://hōst/repo",
    "https://host",
    "https://host/",
    "https://host:99999/repo",
    "https://host/repo?upload-pack=x",
    "https://host/repo#frag",
    "file://otherhost/srv/repo",
    "/srv/repo",
    "../repo",
    "",
    "https://" + "a" * 2050,
])
def test_rejects_injection_and_malformed_remotes(url: str) -> None:
    """Option-like, transport-helper, control-character and malformed remotes are 400s."""
    with pytest.raises(InvalidRequest) as err:
        validate_remote(url, EVERYTHING)
    assert err.value.details["field"] == "remote"


def test_credentials_in_url_are_moved_out() -> None:
    """https://user:token@host/... keeps no secret in url or repr; the token is a credential."""
    remote = validate_remote("https://deploy:s3cret-token@git.example.com/team/app.git", DEFAULT)
    assert remote.url == "https://git.example.com/team/app.git"
    assert "s3cret" not in repr(remote) and "s3cret" not in str(remote)
    assert remote.credentials == GitCredentials(username="deploy", password="s3cret-token")
    assert "s3cret" not in repr(remote.credentials)


def test_ssh_password_in_url_refused() -> None:
    """ssh remotes take keys, not passwords written in the URL."""
    with pytest.raises(InvalidRequest):
        validate_remote("ssh://git:pw@host/repo", DEFAULT)


@pytest.mark.parametrize("branch", ["main", "feature/x-1", "release-2024.05", "v1.2.3", "a_b", "user@x"])
def test_accepts_valid_branches(branch: str) -> None:
    """Ordinary branch names pass unchanged."""
    assert validate_branch(branch) == branch


@pytest.mark.parametrize("branch", [
    "-x", "--upload-pack=touch /tmp/marker", "", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*",
    "a[", "a\\b", "/a", "a/", "a.", "a//b", ".hidden", "a/.b", "x.lock", "a/b.lock/c", "@",
    "a@{1}", "a\x01", "ä", "x" * 201,
])
def test_rejects_invalid_branches(branch: str) -> None:
    """Names git check-ref-format refuses, option-like names and overlong names are 400s."""
    with pytest.raises(InvalidRequest) as err:
        validate_branch(branch)
    assert err.value.details["field"] == "branch"


def test_credentials_must_fit_the_scheme() -> None:
    """An ssh key only goes with ssh, a token only with https; messages never echo values."""
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    assert validate_credentials(GitCredentials(ssh_key=key), "ssh").ssh_key == key
    with pytest.raises(InvalidRequest) as err:
        validate_credentials(GitCredentials(ssh_key=key), "https")
    assert "abc" not in str(err.value.to_dict())
    with pytest.raises(InvalidRequest):
        validate_credentials(GitCredentials(password="tok-123"), "ssh")
    with pytest.raises(InvalidRequest):
        validate_credentials(GitCredentials(ssh_key="not a key"), "ssh")
    with pytest.raises(InvalidRequest) as err:
        validate_credentials(GitCredentials(password="tok\n123"), "https")
    assert "tok" not in str(err.value.to_dict())
    remote = validate_remote("https://host/repo", DEFAULT)
    assert remote.with_credentials(GitCredentials(password="tok-123")).credentials is not None
