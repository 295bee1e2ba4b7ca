//! seedcore: operate a Ray cluster of Docker containers across hosts, in
//! plan/apply style.
//!
//! The flow runs one way (see `docs/architecture.md`):
//! `config` (seedcore.toml) -> `topology` (desired nodes) -> `plan` (diff with
//! what was observed, schedule as a DAG) -> `render` (text, markdown, JSON) or
//! `apply`. `config`, `model`, `topology`, `plan` and `render` are pure and
//! synchronous; `transport`, `backend`, `observe`, `apply` and `cli` are the
//! imperative shell.

pub mod apply;
pub mod audit;
pub mod checks;
pub mod cli;
pub mod compat;
pub mod config;
pub mod engine;
pub mod interrupt;
pub mod lock;
pub mod memory;
pub mod model;
pub mod observe;
pub mod ops;
pub mod ownership;
pub mod plan;
pub mod preflight;
pub mod ray;
pub mod render;
pub mod secrets;
pub mod timings;
pub mod topology;
pub mod transfer;
pub mod transport;
