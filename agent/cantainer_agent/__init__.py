"""cantainer_agent — the host side, pushed to every host by `cantainer up`.

Imports nothing from the workstation package `cantainer`. Kept empty on purpose: the container
runtime's fork server imports this package and should pay for nothing else (docs/design/runtime.md).
"""

__version__ = "0.1.0"
