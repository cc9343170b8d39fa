"""The agent API: JSON lines (protocol.py) on the root-only unix socket, handlers by resource.

Errors raised by handlers become protocol errors in one place (api/errors.py).
"""
