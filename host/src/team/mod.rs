//! The team runtime: a job's task DAG run by the [`scheduler`], each task
//! brought to a decision by [`consensus`] (replicas, verifiers, a voter)
//! within its [`budget`], replicas talking over the run's [`bus`], every
//! step reported as an [`events::Event`]. [`dag`] reads the paper's task
//! lists; [`simulate`] runs scheduling policies on them in virtual time.

pub mod budget;
pub mod bus;
pub mod consensus;
pub mod dag;
pub mod events;
pub mod job;
pub mod scheduler;
mod services;
pub mod simulate;
