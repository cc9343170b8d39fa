"""Declarative stacks: `cantainer apply stack.toml` — read the file (file.py), read the facts
(facts.py), plan the changes (plan.py: pure), show them, apply them (apply.py). docs/design/stacks.md."""
