//! The printfleet API, `printfleet.io/v1alpha1`: the three kinds a user applies
//! (to a cluster, or in a file for the standalone spooler) and their validation.

pub mod common;
pub mod manifests;
pub mod policy;
pub mod printer;
pub mod queue;
mod schema;
pub mod validate;

pub use common::{Condition, SecretKeyRef};
pub use policy::{AccountingPolicy, AccountingPolicySpec};
pub use printer::{Printer, PrinterSpec, PrinterStatus};
pub use queue::{PrintQueue, PrintQueueSpec, PrintQueueStatus};

/// Annotation the operator puts on each PrintQueue in a shard's configuration: the shard
/// that dispatches the queue. Every spooler pod accepts jobs for every queue; only the
/// pods started with that `--shard` send them to printers.
pub const SHARD_ANNOTATION: &str = "printfleet.io/shard";

/// The API group of every printfleet kind.
pub const GROUP: &str = "printfleet.io";
/// The API version of every printfleet kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as it appears in YAML.
pub const API_VERSION: &str = "printfleet.io/v1alpha1";
