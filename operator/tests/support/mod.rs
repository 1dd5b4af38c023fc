//! Test-only helpers: the Kubernetes API double and ways to wait on it.

pub mod apiserver;
