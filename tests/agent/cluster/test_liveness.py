"""The heartbeat period stretches with the cluster so heartbeats stay a bounded raft load."""

from cantainer_agent.cluster.liveness import HEARTBEAT_WRITES, down_after, heartbeat_period


def test_small_clusters_beat_at_the_configured_interval():
    assert heartbeat_period(2.0, 1) == 2.0
    assert heartbeat_period(2.0, 10) == 2.0
    assert down_after(2.0, 3) == 6.0


def test_large_clusters_stretch_the_period_to_bound_the_write_rate():
    for nodes in (11, 30, 100, 1000):
        period = heartbeat_period(2.0, nodes)
        assert period > 2.0
        assert nodes / period <= HEARTBEAT_WRITES + 1e-9  # writes per second, cluster-wide
    assert heartbeat_period(2.0, 30) == 6.0 and down_after(2.0, 30) == 18.0


def test_a_slower_configured_interval_is_kept():
    assert heartbeat_period(30.0, 30) == 30.0
