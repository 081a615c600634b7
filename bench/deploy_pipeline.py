"""Benchmark: the deploy pipeline's clone + build against the same steps done by hand.

For a small Node.js app in a local git repository (``file://``), in the same run and
interleaved in rounds (so machine noise hits both alike):

* **by hand**: ``git clone --depth 1 --single-branch --branch main`` then ``npm install``;
* **pipeline**: ``Pipeline.execute`` with the real fetcher, toolchain resolver, builder and
  release store (toolchain probe, release directory, release.json, read-only walk, log
  file, pruning) and a starter that starts nothing, so the figure is the pipeline's own cost
  up to the start of the app (the start, health gate and switch belong to the services side).

Both use the same npm cache, warmed by one untimed round. Prints medians, the ratio
pipeline / by hand and the pipeline's time per stage; with ``--provision VERSION`` also the
time to provision that Node.js version from the npm registry into an empty directory.

Run: ``.venv/bin/python bench/deploy_pipeline.py [--rounds 7] [--provision 22]``.
Writes JSON to ``bench/.work/deploy_pipeline.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import Row, Section, run_module

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from agent.clock import SystemClock  # noqa: E402
from agent.deploy.build import Builder  # noqa: E402
from agent.deploy.git import GitFetcher  # noqa: E402
from agent.deploy.pipeline import DeploySpec, Pipeline, StartRequest  # noqa: E402
from agent.deploy.provision import NodeProvisioner  # noqa: E402
from agent.deploy.releases import ReleaseStore  # noqa: E402
from agent.deploy.remote import validate_remote  # noqa: E402
from agent.deploy.toolchains import ToolchainResolver  # noqa: E402

PACKAGE_JSON = {
    "name": "bench-app", "version": "1.0.0", "private": True,
    "scripts": {"start": "node server.js"},
    "dependencies": {"ms": "2.1.3"},
}
SERVER_JS = ("const http = require('http');\n"
             "http.createServer((q, s) => s.end('ok')).listen(process.env.PORT || 3000);\n")
GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@example.com", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null"}


class NoStart:
    """A ReleaseStarter that starts nothing."""

    async def start(self, request: StartRequest) -> None:
        return None


def make_repo(root: Path) -> Path:
    repo = root / "app"
    repo.mkdir()
    (repo / "package.json").write_text(json.dumps(PACKAGE_JSON, indent=2))
    (repo / "server.js").write_text(SERVER_JS)
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "app"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return repo


def by_hand(repo: Path, work: Path, npm_cache: Path) -> float:
    dest = work / f"hand-{time.monotonic_ns()}"
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", "--depth", "1", "--single-branch", "--branch", "main",
                    "--", f"file://{repo}", str(dest)], check=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=dest,
                   env={**os.environ, "npm_config_cache": str(npm_cache)}, check=True,
                   stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    shutil.rmtree(dest)
    return elapsed


async def with_pipeline(pipeline: Pipeline, spec: DeploySpec) -> tuple[float, dict[str, float]]:
    run = pipeline.new_run(spec)
    started = time.perf_counter()
    await pipeline.execute(run)
    elapsed = time.perf_counter() - started
    if run.failure is not None:
        raise SystemExit(f"pipeline failed: {run.failure}")
    stages = {str(r.stage): (r.finished_at or r.started_at) - r.started_at for r in run.stages}
    return elapsed, stages


async def provision_time(version: str, registry: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-tc-") as tmp:
        provisioner = NodeProvisioner(registry, Path(tmp))
        try:
            started = time.perf_counter()
            toolchain = await provisioner.provision(version)
            return {"version": toolchain.version, "seconds": time.perf_counter() - started}
        finally:
            await provisioner.close()


QUICK_ARGS = ["--rounds", "2"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--provision", metavar="VERSION", default=None)
    parser.add_argument("--registry", default="https://registry.npmjs.org")
    return parser


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    node_major = subprocess.run(["node", "--version"], capture_output=True, text=True,
                                check=True).stdout.strip().removeprefix("v").split(".")[0]
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        state = root / "state"
        clock = SystemClock()
        releases = ReleaseStore(state / "apps", clock=clock, keep=3)
        pipeline = Pipeline(
            fetcher=GitFetcher(allowed_schemes=["file"], timeout=120, known_hosts=state / "kh"),
            toolchains=ToolchainResolver(state / "toolchains"),
            builder=Builder(clock=clock, cache_dir=state / "cache"),
            releases=releases, starter=NoStart(), clock=clock)
        spec = DeploySpec(service="bench", runtime="nodejs", version=node_major,
                          remote=validate_remote(f"file://{repo}", ["file"]), branch="main",
                          log_path=state / "deploy.log", build_cmd="npm install",
                          run_cmd="npm start", port=3000)
        npm_cache = state / "cache" / "npm"
        by_hand(repo, root, npm_cache)  # warm the npm cache and the page cache
        await with_pipeline(pipeline, spec)
        hand: list[float] = []
        piped: list[float] = []
        stage_times: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            hand.append(by_hand(repo, root, npm_cache))
            elapsed, stages = await with_pipeline(pipeline, spec)
            piped.append(elapsed)
            for name, seconds in stages.items():
                stage_times.setdefault(name, []).append(seconds)

    result: dict[str, Any] = {
        "rounds": args.rounds,
        "by_hand_median_s": statistics.median(hand),
        "pipeline_median_s": statistics.median(piped),
        "ratio": statistics.median(piped) / statistics.median(hand),
        "stage_median_s": {k: statistics.median(v) for k, v in stage_times.items()},
    }
    if args.provision:
        result["provision"] = await provision_time(args.provision, args.registry)
    out = HERE / ".work"
    out.mkdir(exist_ok=True)
    (out / "deploy_pipeline.json").write_text(json.dumps(result, indent=2))
    return result


def collect(argv: list[str] | None = None) -> Section:
    """Run the benchmark and return its rows and details (see bench/_report.py)."""
    args = _parser().parse_args(argv)
    result = asyncio.run(measure(args))
    hand, piped = result["by_hand_median_s"], result["pipeline_median_s"]
    lines = [f"Median of {args.rounds} interleaved rounds: clone + `npm install` by hand "
             f"{hand * 1000:.0f} ms, the pipeline up to the start of the app "
             f"{piped * 1000:.0f} ms (ratio {result['ratio']:.2f}).", ""]
    lines += [f"- stage {name}: {seconds * 1000:.0f} ms"
              for name, seconds in result["stage_median_s"].items()]
    if "provision" in result:
        prov = result["provision"]
        lines.append(f"- provisioning Node.js {prov['version']}: {prov['seconds'] * 1000:.0f} ms")
    rows = [Row("deploy pipeline, clone + build of a small Node.js app (start not included)",
                f"{piped * 1000:.0f} ms", "the same steps by hand (git clone, npm install)",
                f"{hand * 1000:.0f} ms", result["ratio"], "<= 1.15", result["ratio"] <= 1.15)]
    return Section("deploy_pipeline", "Deploy pipeline: clone and build against the steps by hand",
                   "python -m bench.deploy_pipeline " + " ".join(argv or []), rows,
                   "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    return run_module(collect, argv)


if __name__ == "__main__":
    sys.exit(main())
