//! The team runtime: a job's task DAG run by the [`scheduler`], each task
//! brought to a decision by [`consensus`] (replicas, verifiers, a voter)
//! within its [`budget`], replicas talking over the run's [`bus`], every
//! step reported as an [`events::Event`]. [`dag`] reads the paper's task
//! lists; [`simulate`] runs scheduling policies on them in virtual time;
//! [`swap`] swaps a replaced plugin file in while a team serves. [`caps`]
//! bounds what plugins can make the host do; [`plan`] checks the plans
//! roles return. [`submit`] is a job's one entry point, with its journal.
//! [`remote`] is the seam through which replicas run on cluster workers.

pub mod budget;
pub mod bus;
pub mod calibrate;
pub mod caps;
pub mod consensus;
/// Task DAGs live in [`crate::dag`] (the spec reads them too); named here
/// as well for the scheduler's callers.
pub use crate::dag;
pub mod events;
pub mod job;
pub mod plan;
pub mod remote;
pub mod retrieval;
pub mod scheduler;
mod services;
pub mod simulate;
pub mod submit;
pub mod swap;
