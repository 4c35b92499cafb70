"""Tools to torture-test a kvstore deployment or an application built on it.

`local_cluster` runs real `kvstore serve` processes on 127.0.0.1; `nemesis`, `proxy` and `netns`
inject process, network and disk faults; `workload` and `history` record what clients asked and
were told; `linearizability` checks such histories; `walformat` reads the redo log's on-disk
format; `torture` runs all of them as a long soak. They need nothing the library does not
already depend on.
"""
