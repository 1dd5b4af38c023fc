//! printfleet operator: reconciles Printers, PrintQueues and AccountingPolicies into sharded
//! spooler deployments and reports their status.

pub mod controller;
pub mod desired;
pub mod metrics;
pub mod probe;
pub mod server;
pub mod shard;
pub mod status;
pub mod telemetry;
