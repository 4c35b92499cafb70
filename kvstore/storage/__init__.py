"""Durable storage: the redo log (C, via cffi) and the LMDB state machine."""
