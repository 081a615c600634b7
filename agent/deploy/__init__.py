"""The deploy pipeline: fetch (git), toolchain (runtime@version), build, release, start.

Library only: nothing here imports aiohttp's web module, the supervisor or the store. The
services side implements ``ReleaseStarter``; ``DeployKit`` builds the rest from the config.
"""

from agent.deploy.build import Builder, BuildResult, RuntimeEnv
from agent.deploy.errors import DeployError, StartFailed
from agent.deploy.git import FetchResult, GitFetcher
from agent.deploy.kit import DeployKit
from agent.deploy.logfile import DeployLog
from agent.deploy.pipeline import DeployRun, DeploySpec, Failure, Pipeline, ReleaseStarter, StartRequest
from agent.deploy.queue import DeployQueue
from agent.deploy.releases import Release, ReleaseStore
from agent.deploy.remote import GitCredentials, Remote, validate_branch, validate_remote
from agent.deploy.stages import Stage
from agent.deploy.toolchains import RUNTIMES, Toolchain, ToolchainResolver

__all__ = [
    "RUNTIMES",
    "BuildResult",
    "Builder",
    "DeployError",
    "DeployKit",
    "DeployLog",
    "DeployQueue",
    "DeployRun",
    "DeploySpec",
    "Failure",
    "FetchResult",
    "GitCredentials",
    "GitFetcher",
    "Pipeline",
    "Release",
    "ReleaseStarter",
    "ReleaseStore",
    "Remote",
    "RuntimeEnv",
    "Stage",
    "StartFailed",
    "StartRequest",
    "Toolchain",
    "ToolchainResolver",
    "validate_branch",
    "validate_remote",
]
