//! `docs/report-schema.md` and the typed documents must list the same
//! fields: every field a fully populated document serializes is in the
//! doc's tables, and every field in the doc's tables is serialized.
//!
//! How the doc is read: a `##` heading naming a schema id in backticks
//! starts that document's part; in it, a `###` heading names the object its
//! tables describe (`Top level`, or one or more paths in backticks such as
//! `` `exemplars[].hops[]` ``, `[]` standing for an array's elements); the
//! first column of each table row lists that object's fields in backticks.
//! Tables under other headings (units, statistics) are prose.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{DIAGNOSIS_SCHEMA, LAB_SCHEMA, REPORT_SCHEMA, sample};

const DOC: &str = include_str!("../../../docs/report-schema.md");

/// Fields whose content another document describes (`capabilities` is the
/// output of `hoptrace check --json`, see docs/check.md).
const OPAQUE: [(Doc, &str); 1] = [(Doc::Report, "capabilities")];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Doc {
    Report,
    Lab,
    Diagnosis,
}

/// One place for each field: node reports inside a lab document are node
/// reports, and a node report's `lab` section is the lab run's `lab`.
fn canonical(doc: Doc, path: &str) -> (Doc, String) {
    match doc {
        Doc::Lab => match path.strip_prefix("runs[].nodes[].") {
            Some(rest) => canonical(Doc::Report, rest),
            // A node's view holds the same object as the run's requests.
            None if path.starts_with("runs[].node_view.requests.") => canonical(
                Doc::Lab,
                &path.replacen("runs[].node_view.requests.", "runs[].requests.", 1),
            ),
            // `categories` is keyed by category name: one entry stands for all.
            None => match path.strip_prefix("runs[].requests.categories.") {
                Some(rest) => {
                    let field = rest.split_once('.').map_or("", |(_, f)| f);
                    let key = if field.is_empty() {
                        "runs[].requests.categories".to_owned()
                    } else {
                        format!("runs[].requests.categories.*.{field}")
                    };
                    (Doc::Lab, key)
                }
                None => (Doc::Lab, path.to_owned()),
            },
        },
        Doc::Diagnosis => match path.strip_prefix("report.") {
            Some(rest) => canonical(Doc::Report, rest),
            None => (Doc::Diagnosis, path.to_owned()),
        },
        Doc::Report => match path.strip_prefix("lab.") {
            Some(rest) => (Doc::Lab, format!("runs[].lab.{rest}")),
            None => match path.strip_prefix("requests.") {
                Some(rest) => canonical(Doc::Lab, &format!("runs[].requests.{rest}")),
                None => (Doc::Report, path.to_owned()),
            },
        },
    }
}

/// Every field path of `value`, a `doc` document; panics on an empty array,
/// whose element fields the check would silently miss.
fn collect(doc: Doc, value: &Value, prefix: &str, out: &mut BTreeSet<(Doc, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let field = canonical(doc, &path);
                let opaque = OPAQUE
                    .iter()
                    .any(|(d, p)| (*d, *p) == (field.0, field.1.as_str()));
                out.insert(field);
                if !opaque {
                    collect(doc, child, &path, out);
                }
            }
        }
        Value::Array(items) => {
            assert!(
                !items.is_empty(),
                "the sample document has an empty array at {prefix}: fill it so its fields are checked"
            );
            for item in items {
                collect(doc, item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The `(document, field path)` pairs listed in the doc's field tables.
fn documented() -> BTreeSet<(Doc, String)> {
    let mut fields = BTreeSet::new();
    let mut doc = None;
    let mut objects: Vec<String> = Vec::new();
    for line in DOC.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let ids = backticked(heading);
            doc = if ids.contains(&REPORT_SCHEMA) {
                Some(Doc::Report)
            } else if ids.contains(&LAB_SCHEMA) {
                Some(Doc::Lab)
            } else if ids.contains(&DIAGNOSIS_SCHEMA) {
                Some(Doc::Diagnosis)
            } else {
                None
            };
            objects.clear();
        } else if let Some(heading) = line.strip_prefix("### ") {
            objects = if heading.trim() == "Top level" {
                vec![String::new()]
            } else {
                backticked(heading).into_iter().map(str::to_owned).collect()
            };
        } else if let (Some(doc), Some(row)) = (doc, line.strip_prefix('|')) {
            let first = row.split('|').next().unwrap_or_default().trim();
            if objects.is_empty() || first == "field" || first.starts_with("---") {
                continue;
            }
            let names = backticked(first);
            assert!(
                !names.is_empty(),
                "docs/report-schema.md: a field table row without a field name in backticks: {line}"
            );
            for object in &objects {
                for name in &names {
                    let path = if object.is_empty() {
                        (*name).to_owned()
                    } else {
                        format!("{object}.{name}")
                    };
                    fields.insert((doc, path));
                }
            }
        }
    }
    fields
}

/// The `(document, field path)` pairs of fully populated documents.
fn serialized() -> BTreeSet<(Doc, String)> {
    let mut report = sample::full_report();
    report.lab = Some(sample::lab_section());
    let lab = sample::lab_document();
    report.requests.clone_from(&lab.runs[0].requests);
    let mut fields = BTreeSet::new();
    for (doc, value) in [
        (Doc::Report, serde_json::to_value(&report).expect("report")),
        (Doc::Lab, serde_json::to_value(&lab).expect("lab document")),
        (
            Doc::Diagnosis,
            serde_json::to_value(sample::diagnosis()).expect("diagnosis document"),
        ),
    ] {
        collect(doc, &value, "", &mut fields);
    }
    fields
}

#[test]
fn every_serialized_field_is_documented() {
    let documented = documented();
    let missing: Vec<_> = serialized().difference(&documented).cloned().collect();
    assert!(
        missing.is_empty(),
        "fields written but not in docs/report-schema.md: {missing:?}"
    );
}

#[test]
fn every_documented_field_is_serialized() {
    let serialized = serialized();
    let extra: Vec<_> = documented().difference(&serialized).cloned().collect();
    assert!(
        extra.is_empty(),
        "fields in docs/report-schema.md that no document writes: {extra:?}"
    );
}

#[test]
fn the_doc_describes_both_documents() {
    let documented = documented();
    for (doc, path) in [
        (Doc::Report, "schema"),
        (Doc::Report, "segments[].share"),
        (Doc::Report, "exemplars[].hops[].ts_ns"),
        (Doc::Lab, "runs[].nodes"),
        (Doc::Lab, "runs[].lab.client_latency.histogram"),
        (Doc::Diagnosis, "findings[].numbers[].unit"),
        (Doc::Diagnosis, "node_config.links[].offloads_on"),
    ] {
        assert!(
            documented.contains(&(doc, path.to_owned())),
            "{doc:?} {path} not found: is a heading or table malformed?"
        );
    }
}

#[test]
fn every_conn_state_is_documented() {
    use crate::attribution::ledger::ConnState;
    let rows: Vec<&str> = DOC
        .lines()
        .filter(|l| l.starts_with("| `conn_state` |"))
        .collect();
    assert!(
        !rows.is_empty(),
        "no `conn_state` row in docs/report-schema.md"
    );
    for row in rows {
        for state in ConnState::ALL {
            assert!(
                row.contains(&format!("`{}`", state.name())),
                "docs/report-schema.md does not list conn_state `{}`: {row}",
                state.name()
            );
        }
    }
}
