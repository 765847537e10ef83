//! Black-box fault testing of real `raftkv` clusters.
//!
//! [`cluster`] starts members as separate hosts (one network namespace each, on a private
//! bridge of the run's own), [`nemesis`] injects faults on a schedule drawn from a seed,
//! [`workload`] runs concurrent register clients over the etcd v3 API and records every
//! operation, [`linearizability`] checks the recorded histories, [`durability`] checks that
//! acknowledged writes survive every member being killed at once, [`watchcheck`] checks
//! watchers resumed across faults against the KV history, [`leasecheck`] checks leases
//! under repeated leader kills; [`membership`] adds, promotes, removes and replaces members
//! beside the faults; [`watchbench`] measures watch and lease figures beside etcd;
//! [`rolling`] measures the write gaps of a rolling restart beside etcd.

pub mod check;
pub mod cluster;
pub mod durability;
pub mod history;
pub mod leasecheck;
pub mod linearizability;
pub mod membership;
pub mod nemesis;
pub mod rng;
pub mod rolling;
pub mod runner;
pub mod transferbench;
pub mod watchbench;
pub mod watchcheck;
pub mod workload;
