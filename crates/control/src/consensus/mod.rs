//! Observed state (backend health) replicated through a raft group of the
//! control replicas (the `raft` crate). A single replica is a group of one.

pub mod aggregator;
pub mod node;
pub mod peers;
pub mod state;
pub mod storage;

pub use aggregator::{AgentViews, Aggregator};
pub use node::{
    Consensus, Contact, MemberChange, MemberProgress, NoPeers, ProposeError, RaftSettings,
    RaftStatus, Transport,
};
pub use peers::{FORWARDED, Peers};
pub use state::{Command, HealthEvent, HealthTable};
