//! Real servers for printfleet's tests and benchmarks: a PostgreSQL cluster
//! ([`PostgresServer`]) and an S3-protocol server ([`MotoServer`]). Each starts on a free
//! 127.0.0.1 port in a temporary directory and stops with its guard. The spooler's store
//! tests share one of each per test process ([`PostgresServer::shared`],
//! [`MotoServer::shared`]); the whole-system tests and the cluster bench start their own.

mod moto;
mod postgres;
mod process;

pub use moto::MotoServer;
pub use postgres::PostgresServer;
pub use process::{free_port, port_open, wait_until};
