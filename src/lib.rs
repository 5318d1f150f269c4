//! rps: the Robust Parameter Server algorithm of Yu et al., *Distributed Learning over
//! Unreliable Networks* (ICML 2019), as an MPI application.
//!
//! The module tree is the architecture (docs/architecture.md walks through it, floor by
//! floor): [`nn`] and [`optim`] (the engine, its own crate, knowing nothing of MPI),
//! [`data`] (HDF5 datasets and shards), [`mod@drop`] (drop models), [`comm`] (the
//! transport trait; its MPI implementation is the only user of `mpi`), [`exchange`]
//! (roles, blocks and the RPS exchange), [`counters`] (what a rank counts per step),
//! [`config`] (a validated run), [`metrics`] (the HDF5 run log, declared once), [`train`]
//! (the driver, on any transport), [`cli`] and [`commands`]; [`mod@bench`] times the model
//! on one thread and the exchange against an all-reduce under MPI; [`results`] tells what
//! a list of result files is, and [`report`] and [`plot`] turn them into tables and
//! figures; [`netsim`] reads the results of the ns-3 datacenter simulation (`netsim/`).

pub mod bench;
pub mod build_id;
pub mod checkpoint;
pub mod cli;
pub mod comm;
pub mod commands;
pub mod config;
pub mod counters;
pub mod data;
pub mod drop;
pub mod exchange;
pub mod files;
pub mod hash;
pub mod job;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod netsim;
pub mod plot;
pub mod report;
pub mod results;
pub mod schedule;
pub mod session;
pub mod sweep;
pub mod testbed;
pub mod train;

/// The neural-network engine, the `rps-nn` crate of this workspace.
pub use rps_nn as nn;
/// SGD over the flat parameter buffer, from `rps-nn`.
pub use rps_nn::optim;
