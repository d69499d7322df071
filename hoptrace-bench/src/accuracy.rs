//! `hoptrace-accuracy`: injects known causes into the built-in lab, each
//! against a run without it, and prints (or writes, ACCURACY.md) the
//! client-observed growth next to the growth hoptrace attributes to the
//! cause's category. Run by `cargo xtask accuracy`; not shipped. The cases
//! live in `hoptrace_lab::accuracy`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use hoptrace_lab::accuracy::{self, Cause};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Case {
    /// Extra kube-proxy services, a new TCP connection per request at
    /// `--rate`, up to 32 in flight.
    KubeProxy,
    /// The same one at a time at `--slow-rate`: the CPUs idle between
    /// connections and the rules fall out of the caches.
    KubeProxySlow,
    /// A tbf qdisc on node 0's uplink.
    Qdisc,
    /// A tbf qdisc on the underlay toward node 1.
    Underlay,
    /// `--proxy-delay` in the builtin ingress proxy.
    ProxyDelay,
    /// `--proxy-delay` in HAProxy (Lua `core.msleep`).
    ProxyDelayHaproxy,
}

#[derive(Parser)]
#[command(
    name = "hoptrace-accuracy",
    about = "Measure how right hoptrace's attribution is against injected causes"
)]
struct Args {
    /// Cases to run (repeat the flag); every case when absent.
    #[arg(long = "case", value_enum)]
    cases: Vec<Case>,
    /// Requests per second offered in every run but the slow kube-proxy
    /// case's.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Length of each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Extra services of the kube-proxy cases.
    #[arg(long, default_value_t = 5000)]
    services: u32,
    /// New connections per second of the slow kube-proxy case (one at a
    /// time).
    #[arg(long, default_value_t = accuracy::SLOW_CONNECTIONS_PER_S, value_parser = clap::value_parser!(u32).range(1..))]
    slow_rate: u32,
    /// tbf rate of the qdisc and underlay cases, kbit/s: below the offered
    /// load, so that the tbf queue stays full.
    #[arg(long, default_value_t = 230)]
    tbf_kbit: u32,
    /// The ingress proxy's hold of the proxy-delay cases, ms.
    #[arg(long, default_value_t = 2)]
    proxy_delay_ms: u32,
    /// Runs of each case (each a baseline and a run with the cause); the
    /// table shows the run with the median ratio and lists every ratio.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Also write the results as Markdown (ACCURACY.md) here.
    #[arg(long)]
    write: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hoptrace-accuracy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let cases = if args.cases.is_empty() {
        vec![
            Case::KubeProxy,
            Case::KubeProxySlow,
            Case::Qdisc,
            Case::Underlay,
            Case::ProxyDelay,
            Case::ProxyDelayHaproxy,
        ]
    } else {
        args.cases.clone()
    };
    let base = accuracy::base_options(args.rate, args.duration);
    let mut results = Vec::new();
    for case in cases {
        let cause = match case {
            Case::KubeProxy => Cause::KubeProxyServices {
                services: args.services,
                rate: args.rate.round() as u32,
                connections: accuracy::CONNECTIONS_IN_FLIGHT,
            },
            Case::KubeProxySlow => Cause::KubeProxyServices {
                services: args.services,
                rate: args.slow_rate,
                connections: 1,
            },
            Case::Qdisc => Cause::UplinkQdisc {
                rate_kbit: args.tbf_kbit,
            },
            Case::Underlay => Cause::Underlay {
                rate_kbit: args.tbf_kbit,
            },
            Case::ProxyDelay => Cause::ProxyDelay {
                ms: args.proxy_delay_ms,
                ingress: hoptrace_lab::ingress::IngressKind::Builtin,
            },
            Case::ProxyDelayHaproxy => Cause::ProxyDelay {
                ms: args.proxy_delay_ms,
                ingress: hoptrace_lab::ingress::IngressKind::Haproxy,
            },
        };
        let mut runs = Vec::new();
        for i in 0..args.repeat {
            eprintln!(
                "hoptrace-accuracy: {} (run {} of {})",
                cause.name(),
                i + 1,
                args.repeat
            );
            let result = accuracy::run_case(cause, &base)
                .with_context(|| format!("case {}", cause.name()))?;
            eprintln!(
                "hoptrace-accuracy: client growth {:.1} µs, attributed growth {:.1} µs, ratio {:.2}",
                result.client_growth_us(),
                result.attributed_growth_us(),
                result.ratio()
            );
            let listed = |parts: &[(String, f64)]| {
                parts
                    .iter()
                    .map(|(name, us)| format!("{name} {us:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            eprintln!(
                "hoptrace-accuracy: client {:.1} -> {:.1} µs; categories grew {}; timeline grew {}; segments grew most {}",
                result.client_mean_us.0,
                result.client_mean_us.1,
                listed(&result.category_growth_us),
                listed(&result.timeline_growth_us),
                listed(&result.top_segments_us)
            );
            runs.push(result);
        }
        results.push(accuracy::median_run(runs));
    }
    let context = format!(
        "Measured {} on kernel {}, {} CPUs; {} requests/s offered for {} per run (the slow kube-proxy case at the rate its name says); {} run(s) per case, the table shows the one with the median ratio.",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        hoptrace_core::node::kernel_release(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        args.rate,
        humantime::format_duration(args.duration),
        args.repeat,
    );
    let md = accuracy::render_markdown(&results, &context);
    print!("{md}");
    if let Some(path) = &args.write {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
