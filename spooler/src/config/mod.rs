//! The spooler's configuration: the same multi-document YAML a user applies to a cluster
//! (Printer, PrintQueue, AccountingPolicy), loaded, validated and watched for changes.

mod document;
mod unknown;
mod watcher;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use printfleet_crds::validate::{self, FieldError};
use printfleet_crds::{PrintQueueSpec, PrinterSpec};

use crate::accounting::admission::Policy;
use crate::accounting::pricing::PolicyError;

pub use watcher::{POLL_INTERVAL, watch, watch_every};

/// A validated configuration: every queue's printers and policy exist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub printers: BTreeMap<String, PrinterSpec>,
    pub queues: BTreeMap<String, PrintQueueSpec>,
    /// Parsed as they load, so a submission or a settlement only looks its policy up.
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// The shard that dispatches each queue that names one (the `printfleet.io/shard`
    /// annotation the operator sets).
    pub queue_shards: BTreeMap<String, String>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{origin}: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// The file was read; these are everything wrong with it, one per line when displayed.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Problem>),
}

fn display_lines(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// One thing wrong with a configuration file, displayed as
/// `office.yaml:12: document 3 (PrintQueue "lab"): spec.printers[1]: Printer "lab-2" is not defined`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file (or whatever the text came from).
    pub origin: String,
    /// The line in the file, when the YAML parser names one.
    pub line: Option<usize>,
    /// Which document, counted from 1.
    pub document: usize,
    /// The document's kind and name, when they could be read.
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Path of the offending field, e.g. `spec.printers[1]`.
    pub field: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": document {}", self.document)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name:?})")?,
            (Some(kind), None) => write!(f, " ({kind})")?,
            (None, _) => {}
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The kinds a configuration holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Printer,
    PrintQueue,
    AccountingPolicy,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Printer, Kind::PrintQueue, Kind::AccountingPolicy];

    fn name(self) -> &'static str {
        match self {
            Kind::Printer => "Printer",
            Kind::PrintQueue => "PrintQueue",
            Kind::AccountingPolicy => "AccountingPolicy",
        }
    }
}

impl Config {
    /// Whether a spooler of `shard` dispatches `queue`: without a shard, every queue.
    pub fn dispatches(&self, queue: &str, shard: Option<&str>) -> bool {
        shard.is_none_or(|shard| self.queue_shards.get(queue).map(String::as_str) == Some(shard))
    }

    /// The queues a printer serves for a spooler of `shard` (a printer may belong to
    /// several pools).
    pub fn queues_of_printer(&self, printer: &str, shard: Option<&str>) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(name, queue)| {
                queue.printers.iter().any(|p| p == printer) && self.dispatches(name, shard)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The queues the configuration gives `shard`.
    pub fn queues_of_shard(&self, shard: &str) -> Vec<String> {
        self.queues
            .keys()
            .filter(|name| self.dispatches(name, Some(shard)))
            .cloned()
            .collect()
    }

    /// Every shard some queue names.
    pub fn shards(&self) -> Vec<String> {
        let shards: std::collections::BTreeSet<&String> = self.queue_shards.values().collect();
        shards.into_iter().cloned().collect()
    }

    /// The printers a spooler of `shard` drives: those of the queues it dispatches.
    pub fn dispatched_printers(&self, shard: Option<&str>) -> BTreeMap<&str, &PrinterSpec> {
        self.queues
            .iter()
            .filter(|(name, _)| self.dispatches(name, shard))
            .flat_map(|(_, queue)| queue.printers.iter())
            .filter_map(|name| Some((name.as_str(), self.printers.get(name)?)))
            .collect()
    }

    /// Reads and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        Config::parse(&text, &origin)
    }

    /// Parses and validates multi-document YAML; `origin` names the text in errors.
    /// Every problem is reported, not just the first.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut builder = Builder {
            origin,
            ..Builder::default()
        };
        for (index, chunk) in document::split(text).into_iter().enumerate() {
            builder.add(index + 1, &chunk);
        }
        builder.check_references();
        if builder.problems.is_empty() {
            Ok(builder.config)
        } else {
            builder.problems.sort_by_key(|problem| problem.document);
            Err(ConfigError::Invalid(builder.problems))
        }
    }
}

/// Where a named object was defined, for duplicate and reference checks.
struct Definition {
    document: usize,
}

#[derive(Default)]
struct Builder<'a> {
    origin: &'a str,
    config: Config,
    /// Every object whose kind and name could be read, valid or not, so that a broken
    /// Printer does not also make every queue that names it report "not defined".
    defined: BTreeMap<(Kind, String), Definition>,
    /// Every queue that could be read, valid or not, with where it is.
    queue_references: Vec<(Context, PrintQueueSpec)>,
    problems: Vec<Problem>,
}

/// The document being read, for naming it in problems.
#[derive(Clone)]
struct Context {
    document: usize,
    kind: Option<Kind>,
    name: Option<String>,
}

impl Builder<'_> {
    fn problem(
        &mut self,
        at: &Context,
        line: Option<usize>,
        field: Option<String>,
        reason: String,
    ) {
        self.problems.push(Problem {
            origin: self.origin.to_owned(),
            line,
            document: at.document,
            kind: at.kind.map(|kind| kind.name().to_owned()),
            name: at.name.clone(),
            field,
            reason,
        });
    }

    fn field_problems(&mut self, at: &Context, errors: Vec<FieldError>) {
        for error in errors {
            self.problem(at, None, Some(error.field), error.reason);
        }
    }

    fn add(&mut self, index: usize, chunk: &document::Chunk) {
        let mut at = Context {
            document: index,
            kind: None,
            name: None,
        };
        let value: serde_yaml::Value = match serde_yaml::from_str(&chunk.text) {
            Ok(value) => value,
            Err(error) => {
                let located = chunk.locate(&error);
                return self.problem(&at, located.line, located.field, located.reason);
            }
        };
        if value.is_null() {
            return; // empty document: comments only, or a stray `---`
        }
        let Some(header) = document::Header::read(&value) else {
            let reason = "a document is a mapping with apiVersion, kind, metadata and spec".into();
            return self.problem(&at, None, None, reason);
        };
        let kind = match header.kind.as_deref() {
            Some(kind) => Kind::ALL.into_iter().find(|known| known.name() == kind),
            None => None,
        };
        at.kind = kind;
        at.name = header.name.clone();
        let mut usable = true;
        if kind.is_none() {
            usable = false;
            let reason = match &header.kind {
                Some(other) => {
                    format!("{other:?} is not one of Printer, PrintQueue, AccountingPolicy")
                }
                None => "missing; one of Printer, PrintQueue, AccountingPolicy".to_owned(),
            };
            self.problem(&at, None, Some("kind".into()), reason);
        }
        if header.api_version.as_deref() != Some(printfleet_crds::API_VERSION) {
            usable = false;
            let reason = match &header.api_version {
                Some(other) => format!("{other:?} is not {}", printfleet_crds::API_VERSION),
                None => format!("missing; {}", printfleet_crds::API_VERSION),
            };
            self.problem(&at, None, Some("apiVersion".into()), reason);
        }
        match &header.name {
            None => {
                usable = false;
                self.problem(&at, None, Some("metadata.name".into()), "required".into());
            }
            Some(name) if !validate::is_name(name) => {
                usable = false;
                let reason = format!(
                    "{name:?} is not a valid name (lowercase letters, digits, '-' and '.')"
                );
                self.problem(&at, None, Some("metadata.name".into()), reason);
            }
            Some(_) => {}
        }
        let (Some(kind), Some(name), true) = (kind, header.name, usable) else {
            return;
        };
        if let Some(first) = self.defined.get(&(kind, name.clone())) {
            let reason = format!(
                "{} {name:?} is already defined in document {}",
                kind.name(),
                first.document
            );
            return self.problem(&at, None, Some("metadata.name".into()), reason);
        }
        self.defined
            .insert((kind, name.clone()), Definition { document: index });
        for field in unknown::fields(kind, &value) {
            self.problem(&at, None, Some(field), "unknown field".into());
        }
        match kind {
            Kind::Printer => {
                if let Some(printer) = self.typed::<printfleet_crds::Printer>(&at, chunk) {
                    self.accept(
                        &at,
                        validate::validate_printer(&printer.spec),
                        |config, ()| config.printers.insert(name, printer.spec),
                    );
                }
            }
            Kind::PrintQueue => {
                if let Some(queue) = self.typed::<printfleet_crds::PrintQueue>(&at, chunk) {
                    self.queue_references.push((at.clone(), queue.spec.clone()));
                    let shard =
                        queue.metadata.annotations.as_ref().and_then(|annotations| {
                            annotations.get(printfleet_crds::SHARD_ANNOTATION)
                        });
                    if let Some(shard) = shard {
                        self.config.queue_shards.insert(name.clone(), shard.clone());
                    }
                    self.accept(&at, validate::validate_queue(&queue.spec), |config, ()| {
                        config.queues.insert(name, queue.spec)
                    });
                }
            }
            Kind::AccountingPolicy => {
                if let Some(policy) = self.typed::<printfleet_crds::AccountingPolicy>(&at, chunk) {
                    let parsed = validate::validate_policy(&policy.spec).and_then(|()| {
                        Policy::parse(policy.spec).map_err(|PolicyError(errors)| errors)
                    });
                    self.accept(&at, parsed, |config, policy| {
                        config.policies.insert(name, Arc::new(policy))
                    });
                }
            }
        }
    }

    /// Deserializes the document as its kind (from the text, so errors carry a line).
    fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        at: &Context,
        chunk: &document::Chunk,
    ) -> Option<T> {
        match serde_yaml::from_str(&chunk.text) {
            Ok(object) => Some(object),
            Err(error) => {
                let located = chunk.locate(&error);
                self.problem(at, located.line, located.field, located.reason);
                None
            }
        }
    }

    /// Adds what a valid document yields (`verdict`'s value) to the configuration, or
    /// records why the document is not valid.
    fn accept<T, R>(
        &mut self,
        at: &Context,
        verdict: Result<T, Vec<FieldError>>,
        insert: impl FnOnce(&mut Config, T) -> R,
    ) {
        match verdict {
            Ok(value) => {
                insert(&mut self.config, value);
            }
            Err(errors) => self.field_problems(at, errors),
        }
    }

    /// Every queue's printers and accounting policy are defined in the file.
    fn check_references(&mut self) {
        let queues = std::mem::take(&mut self.queue_references);
        for (at, queue) in queues {
            for (index, printer) in queue.printers.iter().enumerate() {
                self.check_reference(
                    &at,
                    Kind::Printer,
                    format!("spec.printers[{index}]"),
                    printer,
                );
            }
            if let Some(policy) = &queue.accounting_policy {
                self.check_reference(
                    &at,
                    Kind::AccountingPolicy,
                    "spec.accountingPolicy".into(),
                    policy,
                );
            }
        }
    }

    fn check_reference(&mut self, at: &Context, kind: Kind, field: String, target: &str) {
        if !self.defined.contains_key(&(kind, target.to_owned())) {
            let reason = format!("{} {target:?} is not defined", kind.name());
            self.problem(at, None, Some(field), reason);
        }
    }
}

#[cfg(test)]
mod tests;
