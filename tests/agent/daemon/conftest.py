"""Fixtures for the real-agent tests: clusters of agent processes and private network namespaces,
always torn down (processes killed by PID, namespaces deleted) whatever the outcome."""

from __future__ import annotations

import os
import shutil

import pytest

from .agentctl import Cluster, Netns


@pytest.fixture
def make_cluster(tmp_path, request):
    made: list[Cluster] = []

    def factory(n: int = 3, base: int = 10, netns: Netns | None = None, extra: dict | None = None) -> Cluster:
        root = tmp_path / f"c{len(made)}"
        root.mkdir()
        cluster = Cluster(root, n, base, netns, extra)
        made.append(cluster)
        return cluster

    def cleanup() -> None:
        for cluster in made:
            cluster.cleanup()

    request.addfinalizer(cleanup)
    return factory


@pytest.fixture
def netns(request):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a private network namespace")
    ns = Netns()
    request.addfinalizer(ns.delete)  # registered first: runs after make_cluster's cleanup
    return ns
