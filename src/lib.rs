//! rps: the Robust Parameter Server algorithm of Yu et al., *Distributed Learning over
//! Unreliable Networks* (ICML 2019), as an MPI application.
//!
//! The module tree is the architecture (docs/architecture.md walks through it): [`nn`]
//! and [`optim`] (the engine, its own crate, knowing nothing of MPI), [`data`] (HDF5
//! datasets and shards), [`mod@drop`] (drop models), [`comm`] (the transport trait; its
//! MPI implementation is the only user of `mpi`), [`rps`] (roles, blocks and the
//! exchange), [`metrics`] (the HDF5 run log, declared once), [`train`] (the driver, on
//! any transport), [`config`], [`cli`] and [`commands`]; [`mod@bench`] times the model on
//! one thread, [`bench_exchange`] the exchange against an all-reduce under MPI; [`report`] and [`plot`] read metrics files back into tables and figures,
//! and [`netsim`] reads the results of the ns-3 datacenter simulation (`netsim/`).

pub mod bench;
pub mod bench_exchange;
pub mod build;
pub mod checkpoint;
pub mod cli;
pub mod comm;
pub mod commands;
pub mod config;
pub mod counters;
pub mod data;
pub mod drop;
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
pub mod rps;
pub mod schedule;
pub mod sweep;
pub mod testbed;
pub mod train;

/// The neural-network engine, the `rps-nn` crate of this workspace.
pub use rps_nn as nn;
/// SGD over the flat parameter buffer, from `rps-nn`.
pub use rps_nn::optim;
