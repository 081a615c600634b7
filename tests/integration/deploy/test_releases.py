"""Release directories on a real filesystem: layout, immutability, pointers, pruning."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent.deploy.build import BuildResult, RuntimeEnv
from agent.deploy.releases import ReleaseStore
from agent.deploy.toolchains import Toolchain
from agent.errors import InvalidRequest, NotFound
from agent.testing import FakeClock

NODE = Toolchain("nodejs", "20.11.1", Path("/usr/bin/node"), "system")


@pytest.fixture
def store(tmp_path: Path) -> ReleaseStore:
    return ReleaseStore(tmp_path / "apps", clock=FakeClock(), keep=3)


async def make_release(store: ReleaseStore, service: str = "web", commit: str = "a" * 40) -> str:
    draft = await store.create(service)
    draft.app_dir.mkdir()
    (draft.app_dir / "server.js").write_text("console.log('hi')\n")
    (draft.app_dir / "lib").mkdir()
    (draft.app_dir / "lib" / "x.js").write_text("1\n")
    release = await store.finalize(
        draft, commit=commit, branch="main", remote="https://git.example.com/app.git",
        toolchain=NODE, runtime_env=RuntimeEnv(("/usr/bin",), {"A": "1"}),
        env={"NODE_ENV": "production"}, build=BuildResult("npm install", 0, 1.5),
        run_cmd="npm start", port=3000)
    return release.id


async def test_layout_and_record(store: ReleaseStore, tmp_path: Path) -> None:
    """A release is apps/<service>/releases/<id>/ with app/ and a release.json describing it."""
    release_id = await make_release(store)
    path = tmp_path / "apps" / "web" / "releases" / release_id
    assert (path / "app" / "server.js").is_file()
    record = json.loads((path / "release.json").read_text())
    assert record["commit"] == "a" * 40 and record["branch"] == "main"
    assert record["remote"] == "https://git.example.com/app.git"
    assert record["toolchain"] == {"runtime": "nodejs", "version": "20.11.1", "source": "system",
                                   "executable": "/usr/bin/node"}
    assert record["env"] == {"NODE_ENV": "production"} and record["run_cmd"] == "npm start"
    assert record["build"] == {"command": "npm install", "exit_code": 0, "duration": 1.5, "timed_out": False}
    assert record["created_at"] == FakeClock().time()
    loaded = await store.get("web", release_id)
    assert loaded.runtime_env == RuntimeEnv(("/usr/bin",), {"A": "1"}) and loaded.port == 3000


async def test_release_is_read_only(store: ReleaseStore, tmp_path: Path) -> None:
    """After finalize no file or directory of the release has a write bit."""
    release_id = await make_release(store)
    path = tmp_path / "apps" / "web" / "releases" / release_id
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files, "."]:
            mode = stat.S_IMODE(os.lstat(Path(root, name)).st_mode)
            assert mode & 0o222 == 0, (Path(root, name), oct(mode))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
async def test_owner_without_privileges_cannot_modify_release() -> None:
    """An app running as the release's owner (not root) can neither change nor add files."""
    base = Path(tempfile.mkdtemp(prefix="dployr-ro-"))
    try:
        base.chmod(0o755)
        store = ReleaseStore(base / "apps", clock=FakeClock(), keep=3)
        release = await store.get("web", await make_release(store))
        subprocess.run(["chown", "-R", "65534:65534", str(base / "apps")], check=True)
        for cmd in (f"echo x >> {release.app_dir}/server.js", f"touch {release.app_dir}/new.txt",
                    f"rm {release.app_dir}/lib/x.js"):
            attempt = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      "sh", "-c", cmd], capture_output=True)
            assert attempt.returncode != 0, cmd
        assert (release.app_dir / "server.js").read_text() == "console.log('hi')\n"
        assert sorted(p.name for p in release.app_dir.iterdir()) == ["lib", "server.js"]
    finally:
        await asyncio.to_thread(shutil.rmtree, base)


async def test_pointers_track_current_and_previous(store: ReleaseStore) -> None:
    """mark_current moves current to previous; marking the same release twice changes nothing."""
    first, second = await make_release(store), await make_release(store)
    assert store.pointers("web") == (None, None)
    await store.mark_current("web", first)
    await store.mark_current("web", second)
    assert store.pointers("web") == (second, first)
    await store.mark_current("web", second)
    assert store.pointers("web") == (second, first)
    await store.mark_current("web", first)  # a rollback
    assert store.pointers("web") == (first, second)


async def test_prune_keeps_newest_n(store: ReleaseStore) -> None:
    """With keep=3 pruning leaves the three newest releases, newest first in listings."""
    ids = [await make_release(store) for _ in range(5)]
    removed = await store.prune("web")
    assert removed == sorted(ids[:2])
    assert [r.id for r in await store.list("web")] == ids[:1:-1]


async def test_prune_never_removes_current_or_previous(store: ReleaseStore) -> None:
    """Old releases that are current and previous (after a rollback) survive any pruning."""
    ids = [await make_release(store) for _ in range(6)]
    await store.mark_current("web", ids[1])
    await store.mark_current("web", ids[0])
    await store.prune("web")
    kept = {r.id for r in await store.list("web")}
    assert kept == {ids[0], ids[1], ids[3], ids[4], ids[5]}
    await store.prune("web", protect=[ids[3]])
    assert {r.id for r in await store.list("web")} == kept


async def test_drafts_are_invisible_and_pruned(store: ReleaseStore, tmp_path: Path) -> None:
    """A draft without release.json is not listed; discard and prune delete drafts (even read-only ones)."""
    draft = await store.create("web")
    (draft.app_dir / "sub").mkdir(parents=True)
    (draft.app_dir / "sub").chmod(0o500)
    stale = await store.create("web")
    assert await store.list("web") == []
    with pytest.raises(NotFound):
        await store.get("web", draft.id)
    await store.discard(draft)
    assert not draft.path.exists()
    assert await store.prune("web", protect=[]) == [stale.id]
    assert list((tmp_path / "apps" / "web" / "releases").iterdir()) == []


async def test_service_name_must_be_a_dns_label(store: ReleaseStore) -> None:
    """Service names become paths, so only DNS labels are accepted (no '..', '/', upper case)."""
    for bad in ("../etc", "a/b", "Web", "-web", "", "x" * 64):
        with pytest.raises(InvalidRequest):
            await store.create(bad)


async def test_remove_service_deletes_everything(store: ReleaseStore, tmp_path: Path) -> None:
    """remove_service deletes every (read-only) release and the pointers."""
    await store.mark_current("web", await make_release(store))
    await store.remove_service("web")
    assert not (tmp_path / "apps" / "web").exists()
    assert await store.list("web") == []
