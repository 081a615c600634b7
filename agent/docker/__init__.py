"""Docker: the engine client, log forwarding, stats, images, image deployments and builds.

The runtime itself (``DockerRuntime``, the Runtime Protocol for containers) lives with the
other runtime in ``agent.supervisor.docker``. Import from the submodules:

- ``engine``: ``DockerEngine``, the one lazily created client, its threads and availability;
- ``containers``: creating, starting and finding the containers of runs;
- ``logs``: ``LogForwarder``, a container's output into the service's raw log files;
- ``stats``: ``DockerStats``, CPU and memory from Docker's stats, cached;
- ``images``: references, limits, pulling, release tags;
- ``releases``: ``ImageDeployments``, ``source: "image"`` deployments and their releases;
- ``build``: ``build_image``, a Dockerfile built into an image.
"""

__all__: list[str] = []
