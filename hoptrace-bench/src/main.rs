//! `hoptrace-bench`: what tracing costs on a two-node lab against an
//! untraced baseline and a dispatch-only floor (throughput,
//! request/response p99, ns per program run, lost events). Run by `cargo
//! xtask bench`; not part of the shipped `hoptrace` binary. The method is in
//! docs/bench.md.

mod agent_memory;
mod bench;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::{Context as _, Result};
use clap::Parser;
use hoptrace_core::kernel::capabilities;

#[derive(Parser)]
#[command(
    name = "hoptrace-bench",
    about = "Measure what hoptrace's tracing costs"
)]
struct BenchArgs {
    /// Rounds of each kind (untraced, traced), alternating; medians are reported.
    #[arg(long, default_value_t = bench::MIN_ROUNDS)]
    rounds: u32,
    /// Seconds per iperf3 run and per request/response run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Request/response rate (HTTP keep-alive), requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Also write the results as Markdown (BENCHMARKS.md) here.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Ablation: traced rounds without netfilter links.
    #[arg(long)]
    no_netfilter: bool,
    /// Ablation: traced rounds without tracepoints.
    #[arg(long)]
    no_tracepoints: bool,
    /// The `hoptrace` binary: its agent's memory is measured under a flood
    /// of 1,000 then 500,000 distinct flows (skipped without it).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&BenchArgs::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // Each cause once: error messages here often repeat their source.
            let mut text = String::new();
            for cause in err.chain() {
                let part = cause.to_string();
                if !text.contains(&part) {
                    if !text.is_empty() {
                        text.push_str(": ");
                    }
                    text.push_str(&part);
                }
            }
            eprintln!("hoptrace-bench: {text}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &BenchArgs) -> Result<u8> {
    if let Err(err) = capabilities::require_tracing(true) {
        eprintln!("hoptrace-bench: {err}");
        return Ok(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the SIGINT/SIGTERM handlers")?;
    }
    let mut opts = bench::BenchOptions::new(stop);
    opts.rounds = args.rounds;
    opts.seconds = args.seconds;
    opts.rr_rate = args.rate;
    opts.netfilter = !args.no_netfilter;
    opts.tracepoints = !args.no_tracepoints;
    opts.agent_bin.clone_from(&args.agent_bin);
    let result = bench::run(&opts, |line| eprintln!("hoptrace-bench: {line}"))?;
    println!("{}", bench::render_text(&result));
    if let Some(path) = &args.write {
        let command = format!(
            "cargo xtask bench --rounds {} --seconds {}{}{}{}",
            args.rounds,
            args.seconds,
            if (args.rate - 2000.0).abs() > f64::EPSILON {
                format!(" --rate {}", args.rate)
            } else {
                String::new()
            },
            if args.no_netfilter {
                " --no-netfilter"
            } else {
                ""
            },
            if args.no_tracepoints {
                " --no-tracepoints"
            } else {
                ""
            },
        );
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        let markdown = bench::render_markdown(&result, &command, bench::preserved_notes(&existing));
        std::fs::write(path, markdown).with_context(|| format!("write {}", path.display()))?;
        eprintln!("hoptrace-bench: wrote {}", path.display());
    }
    Ok(0)
}
