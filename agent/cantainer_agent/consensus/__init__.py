"""Consensus: the raft node (PySyncObj behind a small adapter), its member file and its errors.

``RaftNode(config, fsm, storage, transport)``; who votes is policy and lives in controllers/voters.py.
"""
from .errors import CommandFailed, CommandRejected, NotLeader, NotSubmitted, OutcomeUnknown, RaftError
from .members import Members, journal_path, load_members, members_path, save_members
from .node import RaftConfig, RaftNode, disk_storage, memory_storage

__all__ = ["CommandFailed", "CommandRejected", "NotLeader", "NotSubmitted", "OutcomeUnknown", "RaftError",
           "Members", "journal_path", "load_members", "members_path", "save_members", "RaftConfig", "RaftNode",
           "disk_storage", "memory_storage"]
