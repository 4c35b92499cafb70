"""The Raft core: a pure, deterministic state machine in the style of etcd's raft.

Nothing in this package does I/O, reads a clock or uses the global `random`; a test enforces it.
"""
