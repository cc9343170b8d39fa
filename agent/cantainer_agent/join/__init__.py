"""Joining (dqlite-style): the signed wire format, the join port's server, and the seeds client."""
