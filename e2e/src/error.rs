//! What can go wrong while setting up the system under test.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("`{tool}` is not installed: apt-get install -y {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the spooler failed:\n{0}")]
    Build(String),
    #[error("{what} did not become ready within {seconds}s{log}")]
    NotReady {
        what: String,
        seconds: u64,
        /// The tail of the process's log, when it has one.
        log: String,
    },
    #[error("{what} exited early ({status}){log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("IPP: {0}")]
    Ipp(String),
}

impl HarnessError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
