"""Multi-Paxos ("Paxos Made Simple", with a distinguished proposer) behind the Raft core's
interface: a second `ConsensusCore` (kvstore/consensus/), pure like kvstore/raft/."""

from kvstore.paxos.core import PaxosCore

__all__ = ["PaxosCore"]
