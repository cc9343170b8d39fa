"""The agent process: wiring (agent.py), process lifecycle (process.py), start-up decisions (startup.py)."""
