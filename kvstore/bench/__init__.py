"""`kvstore bench`: throughput and latency of a local 3-member cluster.

`recorder` times operations (shared with the comparison peers in `benchmarks/`), `workloads`
runs kvstore's workloads against a `kvstore.testing.LocalCluster`, and `command` is the command
itself (progress bars, the table and `--json`; rich, the `cli` extra).
"""
