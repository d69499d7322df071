//! `hoptrace compare`: reports side by side; needs no privileges.

use std::path::PathBuf;

use anyhow::Result;

use crate::compare;

/// Arguments of `hoptrace compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// `hoptrace.report.v1` or `hoptrace.lab.v1` files; the first is the baseline.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Also write a self-contained HTML page with charts (and SVG files beside it).
    #[arg(long, value_parser = super::output_file)]
    html: Option<PathBuf>,
}

/// Runs `hoptrace compare`; returns the exit code.
pub fn run(args: &CompareArgs) -> Result<i32> {
    let comparison = compare::compare(&args.reports)?;
    println!("{}", compare::render_table(&comparison));
    if let Some(path) = &args.html {
        for file in compare::write_html(&comparison, path)? {
            eprintln!("hoptrace: wrote {}", file.display());
        }
    }
    Ok(0)
}
