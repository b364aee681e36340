"""The same faults against a `docker compose` cluster, through the Docker SDK (`docker` package).

Each service of the compose project is one agent (or the broker); containers
are found by the labels `docker compose` sets (`com.docker.compose.project`,
`com.docker.compose.service`). A network cut disconnects the container from
the project's network and a restore connects it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class ContainerNotFound(LookupError):
    """No container of that compose service runs; the message lists the services that do."""

    def __init__(self, project: str, service: str, known: list[str]) -> None:
        self.project = project
        self.service = service
        super().__init__(f"no container of service {service!r} in compose project {project!r}; "
                         f"running services: {', '.join(known) or 'none'}")


@dataclass(frozen=True)
class DockerFault:
    kind: str
    service: str
    container_id: str


class DockerCluster:
    """Faults on the containers of one compose project.

    `client` is a `docker.DockerClient`; `attach()` makes one from the
    environment (DOCKER_HOST or the local socket).
    """

    def __init__(self, client: Any, project: str, network: str | None = None) -> None:
        self.client = client
        self.project = project
        self.network = network or f"{project}_default"

    @classmethod
    def attach(cls, project: str, network: str | None = None) -> "DockerCluster":
        import docker

        return cls(docker.from_env(), project, network)

    def container(self, service: str) -> Any:
        containers = self.client.containers.list(filters={"label": f"{PROJECT_LABEL}={self.project}"})
        for container in containers:
            if container.labels.get(SERVICE_LABEL) == service:
                return container
        known = sorted(c.labels.get(SERVICE_LABEL, "?") for c in containers)
        raise ContainerNotFound(self.project, service, known)

    def kill(self, service: str) -> DockerFault:
        """SIGKILL the service's main process; the compose restart policy brings it back."""
        container = self.container(service)
        container.kill(signal="SIGKILL")
        return DockerFault("kill", service, container.id)

    def pause(self, service: str) -> DockerFault:
        """Freeze every process of the container (cgroup freezer), as SIGSTOP does for one process."""
        container = self.container(service)
        container.pause()
        return DockerFault("pause", service, container.id)

    def resume(self, service: str) -> DockerFault:
        container = self.container(service)
        container.unpause()
        return DockerFault("resume", service, container.id)

    def restart(self, service: str, timeout_s: int = 10) -> DockerFault:
        """Stop the container with SIGTERM (SIGKILL after timeout_s) and start it again."""
        container = self.container(service)
        container.restart(timeout=timeout_s)
        return DockerFault("restart", service, container.id)

    def cut(self, service: str) -> DockerFault:
        """Disconnect the container from the project network: its path to the broker is gone."""
        container = self.container(service)
        self.client.networks.get(self.network).disconnect(container, force=True)
        return DockerFault("cut", service, container.id)

    def restore(self, service: str) -> DockerFault:
        container = self.container(service)
        self.client.networks.get(self.network).connect(container, aliases=[service])
        return DockerFault("restore", service, container.id)
