"""OCI images, shared by the agent and the workstation: references, manifests and configs, the registry client.

Standard library only (it is pushed to every host in the agent bundle). ``reference`` parses
``HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``; ``manifest`` reads OCI and Docker schema-2 manifests and
indexes and picks a platform; ``config`` reads an image config and merges it with `run`'s options
docker's way; ``registry`` is an OCI Distribution v2 client (bearer and basic auth, blobs verified
by digest). The host's layer store is the runtime's (runtime/images.py). docs/design/images.md.
"""
