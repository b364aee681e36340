"""The Docker backend's mapping from faults to Docker SDK calls.

No Docker engine runs on the machines these tests run on, so `FakeDocker`
stands in for `docker.DockerClient`: it records the SDK calls the backend
makes. Whether a real engine carries them out is not tested here.
"""

import os

import pytest

from agents.chaos.docker import PROJECT_LABEL, SERVICE_LABEL, ContainerNotFound, DockerCluster


class FakeContainer:
    def __init__(self, calls, service, project="lab"):
        self.calls = calls
        self.id = f"id-{service}"
        self.labels = {PROJECT_LABEL: project, SERVICE_LABEL: service}

    def kill(self, signal):
        self.calls.append(("kill", self.id, signal))

    def pause(self):
        self.calls.append(("pause", self.id))

    def unpause(self):
        self.calls.append(("unpause", self.id))

    def restart(self, timeout):
        self.calls.append(("restart", self.id, timeout))


class FakeNetwork:
    def __init__(self, calls, name):
        self.calls = calls
        self.name = name

    def disconnect(self, container, force):
        self.calls.append(("disconnect", self.name, container.id, force))

    def connect(self, container, aliases):
        self.calls.append(("connect", self.name, container.id, aliases))


class FakeDocker:
    """Stand-in for docker.DockerClient: records calls, since no Docker engine exists here."""

    def __init__(self, services):
        self.calls = []
        self._containers = [FakeContainer(self.calls, s) for s in services]
        client = self

        class Containers:
            def list(self, filters):
                client.calls.append(("list", filters))
                return client._containers

        class Networks:
            def get(self, name):
                return FakeNetwork(client.calls, name)

        self.containers = Containers()
        self.networks = Networks()


@pytest.fixture
def fake():
    return FakeDocker(["nats", "host-h1", "power"])


def test_kill_sends_sigkill(fake):
    DockerCluster(fake, "lab").kill("host-h1")
    assert fake.calls[-1] == ("kill", "id-host-h1", "SIGKILL")
    assert fake.calls[0] == ("list", {"label": f"{PROJECT_LABEL}=lab"})


def test_pause_and_resume(fake):
    cluster = DockerCluster(fake, "lab")
    cluster.pause("power")
    cluster.resume("power")
    assert [c for c in fake.calls if c[0] != "list"] == [("pause", "id-power"), ("unpause", "id-power")]


def test_restart_passes_timeout(fake):
    DockerCluster(fake, "lab").restart("nats", timeout_s=7)
    assert fake.calls[-1] == ("restart", "id-nats", 7)


def test_cut_and_restore_use_project_network(fake):
    cluster = DockerCluster(fake, "lab")
    cluster.cut("host-h1")
    cluster.restore("host-h1")
    assert fake.calls[1] == ("disconnect", "lab_default", "id-host-h1", True)
    assert fake.calls[3] == ("connect", "lab_default", "id-host-h1", ["host-h1"])


def test_unknown_service_lists_known(fake):
    with pytest.raises(ContainerNotFound, match="running services: host-h1, nats, power"):
        DockerCluster(fake, "lab").kill("dpu")


@pytest.mark.skipif(not os.path.exists("/var/run/docker.sock") and not os.environ.get("DOCKER_HOST"),
                    reason="no Docker engine on this machine (no /var/run/docker.sock, no DOCKER_HOST)")
def test_attach_to_real_engine():
    cluster = DockerCluster.attach("dcfleet-missing-project")
    with pytest.raises(ContainerNotFound):
        cluster.container("host-h1")
