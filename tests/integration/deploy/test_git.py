"""The git fetcher against real repositories served on 127.0.0.1 (git daemon, file://, smart HTTP)."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest

from agent.deploy.errors import AuthenticationFailed, FetchTimeout, RemoteUnreachable, UnknownBranch
from agent.deploy.git import GitFetcher
from agent.deploy.remote import GitCredentials, Remote, validate_branch, validate_remote
from agent.errors import InvalidRequest
from tests.support.agent import free_port
from tests.support.git import GitDaemon, GitRepo, SmartHttpGit

SCHEMES = ("https", "ssh", "git", "file", "http")


def fetcher(tmp_path: Path, **kwargs: object) -> GitFetcher:
    options: dict[str, object] = {"allowed_schemes": SCHEMES, "timeout": 60,
                                  "known_hosts": tmp_path / "known_hosts"}
    options.update(kwargs)
    return GitFetcher(**options)  # type: ignore[arg-type]


async def test_clone_over_git_daemon_records_sha(tmp_path: Path, daemon: GitDaemon,
                                                 app_repo: GitRepo) -> None:
    """A git:// clone of a branch returns its tip SHA and checks out its files, without .git."""
    remote = validate_remote(daemon.url("app"), SCHEMES)
    result = await fetcher(tmp_path).fetch(remote, "main", tmp_path / "out")
    assert result.commit == app_repo.head()
    assert (tmp_path / "out" / "README.md").read_text() == "hello\n"
    assert not (tmp_path / "out" / ".git").exists()


async def test_new_commit_gives_new_sha(tmp_path: Path, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """After a new commit the next fetch records the new SHA and content."""
    remote = validate_remote(daemon.url("app"), SCHEMES)
    first = await fetcher(tmp_path).fetch(remote, "main", tmp_path / "one")
    second_sha = app_repo.commit({"README.md": "v2\n"})
    second = await fetcher(tmp_path).fetch(remote, "main", tmp_path / "two")
    assert first.commit != second.commit == second_sha
    assert (tmp_path / "two" / "README.md").read_text() == "v2\n"


async def test_clone_other_branch_over_file_url(tmp_path: Path, app_repo: GitRepo) -> None:
    """file:// works when allowed, and a non-default branch is what gets checked out."""
    sha = app_repo.create_branch("feature/x", {"feature.txt": "yes\n"})
    remote = validate_remote(f"file://{app_repo.path}", SCHEMES)
    result = await fetcher(tmp_path).fetch(remote, "feature/x", tmp_path / "out")
    assert result.commit == sha and (tmp_path / "out" / "feature.txt").exists()


async def test_unknown_branch_is_typed(tmp_path: Path, daemon: GitDaemon, app_repo: GitRepo) -> None:
    """A branch that does not exist raises UnknownBranch naming it; the destination is removed."""
    remote = validate_remote(daemon.url("app"), SCHEMES)
    with pytest.raises(UnknownBranch) as err:
        await fetcher(tmp_path).fetch(remote, "nope", tmp_path / "out")
    assert "'nope'" in err.value.reason
    assert not (tmp_path / "out").exists()


async def test_missing_repository_and_closed_port_are_unreachable(tmp_path: Path, daemon: GitDaemon,
                                                                  app_repo: GitRepo) -> None:
    """No such repository, or nothing listening, raises RemoteUnreachable with git's reason."""
    with pytest.raises(RemoteUnreachable):
        await fetcher(tmp_path).fetch(validate_remote(daemon.url("missing"), SCHEMES), "main",
                                      tmp_path / "a")
    closed = validate_remote(f"git://127.0.0.1:{free_port()}/app", SCHEMES)
    with pytest.raises(RemoteUnreachable) as err:
        await fetcher(tmp_path).fetch(closed, "main", tmp_path / "b")
    assert "127.0.0.1" in err.value.reason


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


async def test_clone_time_limit(tmp_path: Path) -> None:
    """A remote that accepts the connection and never answers ends in FetchTimeout; no git is left."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        remote = validate_remote(f"git://127.0.0.1:{port}/app", SCHEMES)
        with pytest.raises(FetchTimeout) as err:
            await fetcher(tmp_path, timeout=1.0).fetch(remote, "main", tmp_path / "out")
        assert "clone_timeout" in err.value.reason
        assert _processes_mentioning(f"127.0.0.1:{port}/app") == []


INJECTIONS = [
    ("--upload-pack=touch {marker}", "main"),
    ("ext::sh -c touch% {marker}", "main"),
    ("ssh://-oProxyCommand=touch%20{marker}/x", "main"),
    ("-oProxyCommand=touch {marker}:x", "main"),
]


@pytest.mark.parametrize(("url", "branch"), INJECTIONS)
def test_injected_remotes_rejected_before_running(tmp_path: Path, url: str, branch: str) -> None:
    """Option, ext:: and ProxyCommand remotes are 400s and the marker file never appears."""
    marker = tmp_path / "marker"
    with pytest.raises(InvalidRequest):
        validate_remote(url.format(marker=marker), SCHEMES)
    assert not marker.exists()


@pytest.mark.parametrize("branch", ["-x", "--upload-pack=touch {marker}"])
async def test_injected_branches_rejected_even_when_called_directly(tmp_path: Path, daemon: GitDaemon,
                                                                    app_repo: GitRepo, branch: str) -> None:
    """Option-like branches are refused by validation and again by the fetcher itself."""
    marker = tmp_path / "marker"
    branch = branch.format(marker=marker)
    with pytest.raises(InvalidRequest):
        validate_branch(branch)
    with pytest.raises(InvalidRequest):
        await fetcher(tmp_path).fetch(validate_remote(daemon.url("app"), SCHEMES), branch, tmp_path / "o")
    assert not marker.exists()


async def test_git_level_defences_hold_for_forged_remotes(tmp_path: Path) -> None:
    """Even a Remote built without validation cannot use ext:: or a scheme outside the allow list."""
    marker = tmp_path / "marker"
    forged = Remote(url=f"ext::sh -c touch% {marker}", scheme="git", host="x")
    with pytest.raises(RemoteUnreachable):
        await fetcher(tmp_path).fetch(forged, "main", tmp_path / "out")
    file_remote = Remote(url=f"file://{tmp_path}", scheme="file", host="")
    with pytest.raises(Exception, match="not allowed"):
        await fetcher(tmp_path, allowed_schemes=("https",)).fetch(file_remote, "main", tmp_path / "o2")
    assert not marker.exists()


def test_file_url_refused_when_not_allowed(tmp_path: Path, app_repo: GitRepo) -> None:
    """With the default schemes a file:// remote is a 400 naming the field."""
    with pytest.raises(InvalidRequest) as err:
        validate_remote(f"file://{app_repo.path}", ("https", "ssh"))
    assert err.value.details["field"] == "remote"


def _git_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A `git` that logs its argv to a file, then runs the real git."""
    argv_log = tmp_path / "argv.log"
    wrapper = tmp_path / "git-wrapper"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec git "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, argv_log


async def test_https_token_reaches_server_but_not_argv(tmp_path: Path, http_git: SmartHttpGit,
                                                       app_repo: GitRepo) -> None:
    """A token given as a credential authenticates the clone and never appears in git's argv."""
    wrapper, argv_log = _git_wrapper(tmp_path)
    remote = validate_remote(http_git.url("app"), SCHEMES).with_credentials(
        GitCredentials(username="deploy", password=http_git.password))
    lines: list[str] = []

    async def sink(line: str) -> None:
        lines.append(line)

    result = await fetcher(tmp_path, git=str(wrapper)).fetch(remote, "main", tmp_path / "out", sink=sink)
    assert result.commit == app_repo.head()
    assert http_git.password not in argv_log.read_text()
    assert "clone" in argv_log.read_text()
    assert all(http_git.password not in line for line in lines)


async def test_token_in_url_is_used_and_scrubbed(tmp_path: Path, http_git: SmartHttpGit,
                                                 app_repo: GitRepo) -> None:
    """A token written in the URL authenticates but is in neither argv nor the result."""
    wrapper, argv_log = _git_wrapper(tmp_path)
    url = http_git.url("app").replace("http://", f"http://deploy:{http_git.password}@")
    remote = validate_remote(url, SCHEMES)
    result = await fetcher(tmp_path, git=str(wrapper)).fetch(remote, "main", tmp_path / "out")
    assert result.commit == app_repo.head() and http_git.password not in result.remote
    assert http_git.password not in argv_log.read_text()


async def test_wrong_or_missing_credentials_fail_without_leaking(tmp_path: Path, http_git: SmartHttpGit,
                                                                 app_repo: GitRepo) -> None:
    """A wrong token raises AuthenticationFailed without the token; no token fails without prompting."""
    bad = validate_remote(http_git.url("app"), SCHEMES).with_credentials(
        GitCredentials(username="deploy", password="wrong-token-123"))
    with pytest.raises(AuthenticationFailed) as err:
        await fetcher(tmp_path).fetch(bad, "main", tmp_path / "a")
    assert "wrong-token-123" not in str(err.value) and "wrong-token-123" not in repr(err.value)
    with pytest.raises(AuthenticationFailed):
        await fetcher(tmp_path).fetch(validate_remote(http_git.url("app"), SCHEMES), "main", tmp_path / "b")


async def test_ssh_key_passed_as_private_file(tmp_path: Path, app_repo: GitRepo) -> None:
    """An ssh key goes to ssh as a 0600 file (-i) in BatchMode, and is deleted after the clone.

    The ssh program is a stand-in that records what it got and runs the remote command
    locally, so the real git ssh transport is exercised without an sshd.
    """
    seen = tmp_path / "ssh-seen"
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(f"""#!/bin/sh
key=""; prev=""
for a in "$@"; do [ "$prev" = "-i" ] && key="$a"; prev="$a"; done
echo "args: $*" > {seen}
stat -c '%a' "$key" >> {seen}
cat "$key" >> {seen}
for last in "$@"; do :; done
exec sh -c "$last"
""")
    fake_ssh.chmod(0o755)
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END OPENSSH PRIVATE KEY-----"
    remote = validate_remote(f"ssh://git@localhost{app_repo.path}", SCHEMES).with_credentials(
        GitCredentials(ssh_key=key))
    result = await fetcher(tmp_path, ssh=str(fake_ssh)).fetch(remote, "main", tmp_path / "out")
    assert result.commit == app_repo.head()
    record = seen.read_text()
    assert "BatchMode=yes" in record and "IdentitiesOnly=yes" in record
    assert "\n600\n" in record and "c2VjcmV0LWtleS1ieXRlcw==" in record
    key_path = Path(record.split("-i ", 1)[1].split()[0])
    assert not key_path.exists()
    assert "c2VjcmV0" not in record.splitlines()[0]  # not in ssh's argv


async def test_token_as_url_username(tmp_path: Path, repos_root: Path, app_repo: GitRepo) -> None:
    """https://<token>@host/repo (GitHub style) sends the token with an empty password, never in argv."""
    token = "ghp_0123456789abcdefTOKEN"
    server = await SmartHttpGit(repos_root, token, "").start()
    try:
        wrapper, argv_log = _git_wrapper(tmp_path)
        remote = validate_remote(server.url("app").replace("http://", f"http://{token}@"), SCHEMES)
        assert token not in remote.url
        result = await fetcher(tmp_path, git=str(wrapper)).fetch(remote, "main", tmp_path / "out")
    finally:
        await server.stop()
    assert result.commit == app_repo.head()
    assert token not in argv_log.read_text()
