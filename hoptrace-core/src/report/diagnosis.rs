//! The diagnosis document, `hoptrace.diagnosis.v1`, written by `hoptrace
//! diagnose --json`: the findings, what they were computed from (the
//! node's configuration, the counters' growth during the trace, the drops
//! with their flows) and the full node report of the trace.

use serde::{Deserialize, Serialize};

use super::{DocumentError, Report, read_document};
use crate::diagnose::{DropGroup, Finding};
use crate::node::config::{NodeConfig, NodeCounters};

/// Schema id of the diagnosis document: the value of its `schema` field.
pub const DIAGNOSIS_SCHEMA: &str = "hoptrace.diagnosis.v1";

/// The diagnosis document, `hoptrace.diagnosis.v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiagnosisDocument {
    /// Always [`DIAGNOSIS_SCHEMA`].
    pub schema: String,
    /// Node name.
    pub node: String,
    /// Start of tracing, RFC 3339.
    pub started_at: String,
    /// The findings, worst first.
    pub findings: Vec<Finding>,
    /// The node's configuration as read before tracing.
    pub node_config: NodeConfig,
    /// Growth of the node's counters during the trace (gauges as read
    /// after it).
    pub counters: NodeCounters,
    /// Dropped journeys by (reason, location), with example flows.
    pub drop_groups: Vec<DropGroup>,
    /// The node report of the trace, `hoptrace.report.v1`.
    pub report: Report,
}

impl DiagnosisDocument {
    /// Pretty JSON.
    ///
    /// # Errors
    /// [`DocumentError::Serialize`] when serde_json fails (a non-finite
    /// number cannot be written, for instance).
    pub fn to_json_pretty(&self) -> Result<String, DocumentError> {
        serde_json::to_string_pretty(self).map_err(|source| DocumentError::Serialize {
            schema: DIAGNOSIS_SCHEMA,
            source,
        })
    }

    /// Reads a diagnosis document written by [`DiagnosisDocument::to_json_pretty`].
    ///
    /// # Errors
    /// [`DocumentError::Json`], [`DocumentError::NotADocument`],
    /// [`DocumentError::Schema`] (only [`DIAGNOSIS_SCHEMA`] is accepted) or
    /// [`DocumentError::Invalid`] for a missing or mistyped field.
    pub fn from_json(json: &str) -> Result<DiagnosisDocument, DocumentError> {
        read_document(json, &[DIAGNOSIS_SCHEMA])?;
        serde_json::from_str(json).map_err(|source| DocumentError::Invalid {
            schema: DIAGNOSIS_SCHEMA,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn a_diagnosis_reads_back_and_other_schemas_are_refused() {
        let doc = sample::diagnosis();
        let json = doc.to_json_pretty().unwrap();
        assert_eq!(DiagnosisDocument::from_json(&json).unwrap(), doc);
        let report = sample::report().to_json_pretty().unwrap();
        assert!(matches!(
            DiagnosisDocument::from_json(&report),
            Err(DocumentError::Schema { .. })
        ));
    }
}
