"""The replicated cluster state, as pure logic: the state machine, IPAM, liveness and the views.

Nothing here touches sockets, threads, clocks or the kernel (docs/design/raft.md, "the state machine").
"""
