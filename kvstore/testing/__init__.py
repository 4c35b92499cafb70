"""Tools to test kvstore deployments: a local process cluster, and (later) a torture harness."""
