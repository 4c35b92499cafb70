"""The systems kvstore is compared with, each run as 3 processes on 127.0.0.1 in the same run.

Each harness module has `available() -> str | None` (None, or why the peer cannot run here) and
`run(settings, progress) -> list[WorkloadResult]` (start the peer's cluster, run its workloads,
stop it). They time operations with the same recorder and runners as kvstore itself, from
`kvstore.bench.recorder`: `etcd` (Debian's etcd-server, through its v3 HTTP/JSON gateway) and
`pysyncobj_peer` (PyPI's pysyncobj, a `ReplDict` in three processes).
"""
