"""The agent API's cluster methods: networks and containers.

Each method validates, turns the request into replicated commands (decided in raft, identical on
every node), and for containers placed on this host drives the local runtime and network. Reads
come from this node's replica, which is enough for listing; anything that must be exact (names,
addresses) is decided inside a replicated command.

Methods (params → result):
``network.create {cidr}`` → ``{cidr, vni, containers}``
``network.ls``            → ``[{cidr, vni, hosts, containers}]``
``network.rm {cidr}``     → ``{removed: cidr}``
``container.ps``          → ``[{name, id, host, network, ip, mac, image, command, state, exit_code, …}]``
``container.run``, ``container.stop``, ``container.rm``, ``image.status``, ``image.import``:
see :class:`cantainer_agent.containers.LocalContainers`.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from . import protocol
from .raft import CommandFailed, CommandRejected, OutcomeUnknown, RaftError, RaftNode
from .views import container_view, network_views


def _raft_or_unavailable(get_raft: Callable[[], RaftNode | None]) -> RaftNode:
    raft = get_raft()
    if raft is None:
        raise protocol.ProtocolError(protocol.UNAVAILABLE, "the agent is still starting")
    return raft


# Commands whose second application, after a first one of unknown outcome, is refused with this
# text although the first one did happen: the refusal then means success.
ALREADY_DONE = {"remove_container": "no container named", "delete_network": "does not exist"}
RETRY_FOR = 10.0  # seconds: long enough to ride out an election on a loaded host


def replicate(raft: RaftNode, command: str, args: dict, timeout: float = 5.0) -> Any:
    """Run a state command through raft, mapping failures onto protocol errors.

    A command whose outcome is unknown (the leader changed while it was in flight) is retried —
    but not one that definitely failed (no leader reachable: refused at once, within seconds):
    every command is idempotent — a container create carries its id, reports and desired states
    are plain assignments, and a repeated removal is recognised by ALREADY_DONE.
    """
    deadline = time.monotonic() + RETRY_FOR
    attempt = 0
    while True:
        attempt += 1
        try:
            return raft.apply(command, args, timeout=timeout)
        except CommandRejected as error:
            if attempt > 1 and ALREADY_DONE.get(command, "\0") in str(error):
                return True
            raise protocol.ProtocolError(protocol.REJECTED, str(error)) from None
        except OutcomeUnknown as error:
            if time.monotonic() >= deadline:
                raise protocol.ProtocolError(protocol.UNAVAILABLE, f"{error} (is a majority of the cluster up?)") from None
            time.sleep(min(0.05 * attempt, 0.5))
        except CommandFailed as error:
            raise protocol.ProtocolError(protocol.UNAVAILABLE, f"{error} (is a majority of the cluster up?)") from None


def read_state(raft: RaftNode) -> dict:
    try:
        return raft.snapshot()["state"]
    except RaftError as error:
        raise protocol.ProtocolError(protocol.UNAVAILABLE, str(error)) from None


class ClusterMethods:
    def __init__(self, get_raft: Callable[[], RaftNode | None]) -> None:
        self._get_raft = get_raft

    def handlers(self) -> dict[str, Callable[[dict], Any]]:
        return {
            "network.create": self.network_create,
            "network.ls": self.network_ls,
            "network.rm": self.network_rm,
            "container.ps": self.container_ps,
        }

    def network_create(self, params: dict) -> dict:
        raft = _raft_or_unavailable(self._get_raft)
        return replicate(raft, "create_network", {"cidr": params.get("cidr"), "ts": time.time()})

    def network_ls(self, _params: dict) -> list[dict]:
        return network_views(read_state(_raft_or_unavailable(self._get_raft)))

    def network_rm(self, params: dict) -> dict:
        raft = _raft_or_unavailable(self._get_raft)
        replicate(raft, "delete_network", {"cidr": params.get("cidr")})
        return {"removed": params.get("cidr")}

    def container_ps(self, _params: dict) -> list[dict]:
        state = read_state(_raft_or_unavailable(self._get_raft))
        return [container_view(record) for _, record in sorted(state["containers"].items())]
