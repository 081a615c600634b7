"""Deployments from git, wired: the deploy pipeline (``agent.deploy``) over the supervisor and
the store.

* ``service.RemoteDeployments``: create, update (PUT), roll back, list releases;
* ``starter.SupervisorStarter``: the pipeline's ``ReleaseStarter`` (the zero-downtime switch);
* ``records.RunRecorder``: the pipeline's observer (runs, deployment status, events) and the
  recovery of runs an agent restart interrupted;
* ``logs.DeployLogs``: deployment logs for the log readers (tail, follow).
"""

from agent.delivery.logs import DeployLogs
from agent.delivery.records import RunRecorder
from agent.delivery.service import DeploymentUpdate, ReleaseInfo, RemoteDeployment, RemoteDeployments
from agent.delivery.starter import SupervisorStarter

__all__ = [
    "DeployLogs",
    "DeploymentUpdate",
    "ReleaseInfo",
    "RemoteDeployment",
    "RemoteDeployments",
    "RunRecorder",
    "SupervisorStarter",
]
