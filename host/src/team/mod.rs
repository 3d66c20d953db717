//! The team runtime. What lives here so far: task DAGs ([`dag`]) and the
//! scheduling policies for them, simulated in virtual time against measured
//! model latencies ([`simulate`]). The scheduler that runs roles on model
//! nodes, the bus and consensus build on these.

pub mod consensus;
pub mod dag;
pub mod job;
pub mod simulate;
