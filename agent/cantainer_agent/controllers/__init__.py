"""Controllers: level-triggered ``sync(snapshot)`` loops — containers, overlay and voters."""
