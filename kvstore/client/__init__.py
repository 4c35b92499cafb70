"""The client: leader discovery, redirects, sessions for exactly-once writes, load balancing."""
