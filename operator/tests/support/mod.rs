//! Test-only helpers: the Kubernetes API double, and the operator binary run against it.
//! Each test target (and the benchmark) uses a different part of them.

pub use printfleet_e2e::apiserver;
#[allow(dead_code)]
pub mod operator_process;
