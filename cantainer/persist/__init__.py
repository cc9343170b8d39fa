"""The connection process: one SSH connection per host, kept across CLI calls (like OpenSSH's
ControlMaster with ControlPersist).

A CLI command asks it, over a unix socket, to run a command on a host, write a file there, open a
stream to the agent's socket or run a command attached to the CLI's stdio (`exec`, `logs`, attached
`run`); the process opens the SSH channel on its connection to that host (made on first use) and
relays. So the common CLI path imports neither asyncssh nor rich and pays no handshake.

Invariants: one process per user and code version (the socket's name carries a fingerprint of the
code, so an upgraded CLI never talks to an old process); the socket lives in a 0700 directory owned
by the user and is 0600, and the process serves only peers of its own uid (SO_PEERCRED); it exits
after ``CANTAINER_PERSIST`` seconds (default 300) without a client, and ``CANTAINER_PERSIST=no`` or
``cantainer --no-persist`` turns it off. A host's connection is replaced when its inventory settings
or the files SSH trusts (identity, known_hosts, ssh_config) change. Design: docs/design/cli.md.
"""
