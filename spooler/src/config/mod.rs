//! The spooler's configuration: the same multi-document YAML a user applies to a cluster
//! (Printer, PrintQueue, AccountingPolicy), loaded, validated and watched for changes.

use std::collections::BTreeMap;

use printfleet_crds::{AccountingPolicySpec, PrintQueueSpec, PrinterSpec};

/// A validated configuration: every queue's printers and policy exist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub printers: BTreeMap<String, PrinterSpec>,
    pub queues: BTreeMap<String, PrintQueueSpec>,
    pub policies: BTreeMap<String, AccountingPolicySpec>,
}

impl Config {
    /// The queues a printer serves (a printer may belong to several pools).
    pub fn queues_of_printer(&self, printer: &str) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, queue)| queue.printers.iter().any(|p| p == printer))
            .map(|(name, _)| name.clone())
            .collect()
    }
}
