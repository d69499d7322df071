//! `hoptrace compare`: runs side by side; needs no privileges.

use std::path::PathBuf;

use anyhow::Result;

use crate::compare;

/// Arguments of `hoptrace compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// `hoptrace.report.v1` or `hoptrace.lab.v1` files: one column per
    /// report and per lab run (summed over its nodes); the first column is
    /// the baseline.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Name of a column, once per column in order (default: the lab run's
    /// datapath/kube-proxy/ingress, or the file name).
    #[arg(long = "label", value_name = "NAME")]
    labels: Vec<String>,
    /// Also write a self-contained HTML page with charts (and SVG files beside it).
    #[arg(long, value_parser = super::output_file)]
    html: Option<PathBuf>,
}

/// Runs `hoptrace compare`; returns the exit code.
pub fn run(args: &CompareArgs) -> Result<i32> {
    let mut comparison = compare::compare(&args.reports)?;
    if !args.labels.is_empty() {
        comparison.set_labels(&args.labels)?;
    }
    println!("{}", compare::render_table(&comparison));
    if let Some(path) = &args.html {
        for file in compare::write_html(&comparison, path)? {
            eprintln!("hoptrace: wrote {}", file.display());
        }
    }
    Ok(0)
}
