//! The documents hoptrace writes, one typed schema each, and their tables.
//!
//! - `node.rs`: the node report [`Report`], `hoptrace.report.v1`
//!   ([`REPORT_SCHEMA`]), built from a [`Ledger`](crate::attribution::ledger::Ledger).
//! - `lab.rs`: the lab document [`LabDocument`], `hoptrace.lab.v1`
//!   ([`LAB_SCHEMA`]): runs of node reports with their `lab` section.
//! - `table.rs`: the node report as terminal tables ([`render_table`]).
//! - `assemble.rs`: from a finished session to its report ([`finish`]).
//! - `timeline.rs`: joined requests as a `requests` section, its table and
//!   sentence (the lab's runs and `hoptrace trace`'s report).
//! - `diagnosis.rs`: the diagnosis document [`DiagnosisDocument`],
//!   `hoptrace.diagnosis.v1` ([`DIAGNOSIS_SCHEMA`]): findings, node
//!   configuration, counters, drops and the node report.
//!
//! [`Document`] reads either document by its `schema` field. Every field,
//! unit and range is documented in `docs/report-schema.md`; a unit test
//! checks that the document and these types list the same fields.

mod assemble;
mod diagnosis;
mod lab;
mod node;
mod table;
pub mod timeline;

#[cfg(test)]
pub(crate) mod sample;
#[cfg(test)]
mod schema_doc;

pub use assemble::{build_report, finish};
pub use diagnosis::{DIAGNOSIS_SCHEMA, DiagnosisDocument};
pub use lab::{
    ClientErrorKinds, ClientLatency, LAB_SCHEMA, LabDocument, LabLoad, LabNodeView, LabRequests,
    LabRunDocument, LabSection, RequestCategory, RequestWaterfall, WaterfallSegment,
};
pub use node::{
    ALL, CategoryRow, DropRow, EndToEndRow, REPORT_SCHEMA, Report, ReportMeta, SegmentRow, Stats,
    segments_by_name,
};
pub use table::{
    keep_name_words, render_categories, render_table, styled_table, word_wrapped_table,
};

/// Types of the node report defined next to the ledger that fills them.
pub use crate::attribution::ledger::{
    ConnState, Direction, Exemplar, ExemplarHop, ExemplarSegment, FlowInfo, LedgerCounters,
};
/// The category of a segment or category row.
pub use crate::attribution::taxonomy::Category;

/// Every schema id this version reads and writes.
pub const SCHEMAS: [&str; 3] = [REPORT_SCHEMA, LAB_SCHEMA, diagnosis::DIAGNOSIS_SCHEMA];

/// Errors reading or writing a hoptrace document.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The text is not JSON.
    #[error("not valid JSON")]
    Json(#[source] serde_json::Error),
    /// JSON, but not an object with a string `schema` field (e.g. the
    /// output of `hoptrace check --json`).
    #[error(
        "not a hoptrace document: expected a JSON object with \"schema\": \"{REPORT_SCHEMA}\" or \"{LAB_SCHEMA}\""
    )]
    NotADocument,
    /// A hoptrace-like document with a schema not accepted here.
    #[error("unsupported schema {found:?}, expected {}", expected.join(" or "))]
    Schema {
        /// The `schema` value found.
        found: String,
        /// The schemas that would have been accepted.
        expected: &'static [&'static str],
    },
    /// The schema is known but a field is missing or has the wrong type.
    #[error("not a valid {schema} document")]
    Invalid {
        /// The document's schema id.
        schema: &'static str,
        /// What serde found, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// serde_json could not serialize the document.
    #[error("cannot serialize the {schema} document")]
    Serialize {
        /// The document's schema id.
        schema: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

/// A document read by its `schema` field.
#[derive(Clone, Debug, PartialEq)]
pub enum Document {
    /// `hoptrace.report.v1` (boxed: much larger than the lab variant).
    Report(Box<Report>),
    /// `hoptrace.lab.v1`.
    Lab(LabDocument),
}

impl Document {
    /// Reads a node report or a lab document, whichever `schema` says; a
    /// diagnosis (`hoptrace.diagnosis.v1`) is read as the node report it
    /// holds.
    ///
    /// # Errors
    /// [`DocumentError::Json`] when `json` is not JSON,
    /// [`DocumentError::NotADocument`] when it is not an object with a
    /// string `schema`, [`DocumentError::Schema`] for other schemas and
    /// [`DocumentError::Invalid`] when a field is missing or mistyped.
    pub fn from_json(json: &str) -> Result<Document, DocumentError> {
        match read_document(json, &SCHEMAS)? {
            REPORT_SCHEMA => Report::from_json(json).map(|r| Document::Report(Box::new(r))),
            diagnosis::DIAGNOSIS_SCHEMA => {
                serde_json::from_str::<diagnosis::DiagnosisDocument>(json)
                    .map(|d| Document::Report(Box::new(d.report)))
                    .map_err(|source| DocumentError::Invalid {
                        schema: diagnosis::DIAGNOSIS_SCHEMA,
                        source,
                    })
            }
            _ => LabDocument::from_json(json).map(Document::Lab),
        }
    }

    /// The document's schema id.
    pub fn schema(&self) -> &'static str {
        match self {
            Document::Report(_) => REPORT_SCHEMA,
            Document::Lab(_) => LAB_SCHEMA,
        }
    }
}

/// Checks that `json` is an object whose `schema` is one of `expected`;
/// returns that schema id.
fn read_document(
    json: &str,
    expected: &'static [&'static str],
) -> Result<&'static str, DocumentError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(DocumentError::Json)?;
    let found = value
        .as_object()
        .and_then(|object| object.get("schema"))
        .and_then(serde_json::Value::as_str)
        .ok_or(DocumentError::NotADocument)?;
    expected
        .iter()
        .copied()
        .find(|schema| *schema == found)
        .ok_or_else(|| DocumentError::Schema {
            found: found.to_owned(),
            expected,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_read_by_schema() {
        let report = sample::report();
        let lab = sample::lab_document();
        assert_eq!(
            Document::from_json(&report.to_json_pretty().unwrap()).unwrap(),
            Document::Report(Box::new(report))
        );
        let read = Document::from_json(&lab.to_json_pretty().unwrap()).unwrap();
        assert_eq!(read.schema(), LAB_SCHEMA);
        assert_eq!(read, Document::Lab(lab));
    }

    #[test]
    fn a_diagnosis_is_read_as_its_node_report() {
        let report = sample::report();
        let diagnosis = diagnosis::DiagnosisDocument {
            schema: diagnosis::DIAGNOSIS_SCHEMA.into(),
            node: "node1".into(),
            started_at: "2026-12-01T00:00:00Z".into(),
            findings: Vec::new(),
            node_config: Default::default(),
            counters: Default::default(),
            drop_groups: Vec::new(),
            report: report.clone(),
        };
        let json = serde_json::to_string(&diagnosis).unwrap();
        assert_eq!(
            Document::from_json(&json).unwrap(),
            Document::Report(Box::new(report))
        );
    }

    #[test]
    fn other_json_is_not_a_document() {
        let check =
            r#"{"items": [{"name": "tc", "available": true}], "notes": [], "fidelity": "full"}"#;
        for json in [
            r#"{"hello":"world"}"#,
            "[1,2,3]",
            "17",
            r#"{"schema": 1}"#,
            check,
        ] {
            let err = Document::from_json(json).expect_err(json);
            assert!(
                matches!(err, DocumentError::NotADocument),
                "{json}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains(REPORT_SCHEMA) && message.contains(LAB_SCHEMA),
                "{message}"
            );
        }
        let err = Document::from_json(r#"{"schema": "other.v9"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported schema \"other.v9\", expected hoptrace.report.v1 or hoptrace.lab.v1 or hoptrace.diagnosis.v1"
        );
        assert!(matches!(
            Document::from_json("{ not json"),
            Err(DocumentError::Json(_))
        ));
        let err = Document::from_json(r#"{"schema": "hoptrace.lab.v1"}"#).unwrap_err();
        assert!(matches!(
            err,
            DocumentError::Invalid {
                schema: LAB_SCHEMA,
                ..
            }
        ));
        let source = std::error::Error::source(&err).expect("serde's reason");
        assert!(source.to_string().contains("runs"), "{source}");
    }
}
