//! The `hoptrace` command line: one file per subcommand under `cmd/`,
//! `compare/` for side-by-side reports, `agent/` for the node agent's
//! metrics and names, `stop` for SIGINT/SIGTERM.

mod agent;
mod cmd;
mod compare;
mod stop;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hoptrace",
    version,
    about = "Where does each microsecond of a Kubernetes node's datapath go?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe what this kernel offers (by trying) and what hoptrace can time.
    Check {
        /// Machine-readable output: every item with true/false and the kernel's reason.
        #[arg(long)]
        json: bool,
    },
    /// Trace every packet crossing this node's datapath and attribute its latency.
    Trace(cmd::trace::TraceArgs),
    /// Diagnose this node: trace, read its configuration and counters, and
    /// say what is wrong and what to change (exit 3 when something is critical).
    Diagnose(cmd::diagnose::DiagnoseArgs),
    /// Remove clsact tc filters left behind by a killed hoptrace (only hoptrace's own).
    Cleanup {
        /// Network namespace to clean (a /run/netns path); default: this one.
        #[arg(long)]
        netns: Option<PathBuf>,
    },
    /// Build a flannel-, Calico- or Cilium-style datapath in network namespaces,
    /// put load through it, trace every node and say where the time went.
    Lab(cmd::lab::LabArgs),
    /// Trace this node continuously and serve Prometheus metrics on
    /// /metrics (with /healthz and /readyz), until SIGTERM.
    Agent(cmd::agent::AgentArgs),
    /// Compare reports side by side (per category and segment, with deltas).
    /// Needs no privileges.
    Compare(cmd::compare::CompareArgs),
}

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version: clap prints help text as written (its
            // wrapping needs the terminal_size crate); fit it here.
            print!("{}", wrap_help(&err.render().to_string(), HELP_WIDTH));
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("hoptrace: {}", usage_error_line(&err.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let code = match cli.command {
        Command::Check { json } => cmd::check::run(json),
        Command::Cleanup { netns } => cmd::cleanup::run(netns.as_deref()),
        Command::Trace(args) => exit_code(cmd::trace::run(args)),
        Command::Diagnose(args) => exit_code(cmd::diagnose::run(&args)),
        Command::Lab(args) => exit_code(cmd::lab::run(args)),
        Command::Agent(args) => exit_code(cmd::agent::run(&args)),
        Command::Compare(args) => exit_code(cmd::compare::run(&args)),
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

/// Makes glibc's malloc use one arena for every thread.
///
/// hoptrace parses the kernel's BTF (~15 MB of heap each time) on the main
/// thread and on the threads that enter a node's network namespace; with
/// glibc's default of one arena per thread (up to 8 per core) each thread
/// keeps its own freed copy and the peak resident set doubles. With one
/// arena, a later parse reuses the memory an earlier one freed. The drain
/// thread is the only busy allocator, so the shared lock costs nothing
/// measurable. (glibc `malloc/arena.c`, `M_ARENA_MAX`; a no-op elsewhere.)
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called
    // before any other thread exists, and an unknown value is ignored.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Width of `--help` and `-h`, in columns: the width of every other text
/// hoptrace prints ([`hoptrace_core::diagnose::WIDTH`]).
const HELP_WIDTH: usize = hoptrace_core::diagnose::WIDTH;

/// `text` (clap's help) with every line longer than `width` columns
/// wrapped at spaces. A continuation line is indented like the text it
/// continues: an option's description in `--help` (indented on its own
/// line), or the description column of `-h` (after the option and a gap
/// of two or more spaces). A single word longer than the line stays whole.
fn wrap_help(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for line in text.lines() {
        if line.chars().count() <= width {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let lead = line.len() - line.trim_start().len();
        // `-h`: "  -x, --flag <V>  Description": continue under "Description".
        let indent = line[lead..]
            .find("  ")
            .map(|gap| lead + gap)
            .and_then(|gap| {
                let text_at = gap + line[gap..].len() - line[gap..].trim_start().len();
                (line[text_at..].chars().count() > 0 && text_at < width / 2).then_some(text_at)
            })
            .unwrap_or(lead);
        let (head, body) = line.split_at(indent);
        let mut current = head.to_owned();
        let mut current_width = current.chars().count();
        let mut empty = true;
        for word in body.split(' ').filter(|w| !w.is_empty()) {
            let w = word.chars().count();
            if !empty && current_width + 1 + w > width {
                out.push_str(current.trim_end());
                out.push('\n');
                current = " ".repeat(indent);
                current_width = indent;
                empty = true;
            }
            if !empty {
                current.push(' ');
                current_width += 1;
            }
            current.push_str(word);
            current_width += w;
            empty = false;
        }
        out.push_str(current.trim_end());
        out.push('\n');
    }
    out
}

/// clap's usage error on one line: its first paragraph (without the
/// `error: ` prefix and the "try --help" tip), lines joined.
fn usage_error_line(rendered: &str) -> String {
    let first = rendered.split("\n\n").next().unwrap_or(rendered);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints an error once, with its chain of causes, and maps it to exit code 1.
fn exit_code(result: anyhow::Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hoptrace: {}", one_line(&err));
            1
        }
    }
}

/// The error and its causes on one line, each cause said once: many error
/// types already include their source's text in their own message.
fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{one_line, wrap_help};

    #[test]
    fn help_is_wrapped_under_its_own_text() {
        let long = format!(
            "Usage: hoptrace lab [OPTIONS]\n      --datapath <D>  {}\n          {}\n",
            "word ".repeat(30).trim_end(),
            "more ".repeat(30).trim_end()
        );
        let wrapped = wrap_help(&long, 60);
        for line in wrapped.lines() {
            assert!(line.chars().count() <= 60, "{line:?}");
        }
        let lines: Vec<&str> = wrapped.lines().collect();
        assert_eq!(lines[0], "Usage: hoptrace lab [OPTIONS]");
        assert!(lines[1].starts_with("      --datapath <D>  word word"));
        // -h: continuation under the description; --help: under the text.
        assert!(lines[2].starts_with(&format!("{}word", " ".repeat(22))));
        let more: Vec<&&str> = lines.iter().filter(|l| l.contains("more")).collect();
        assert!(more.len() > 1);
        assert!(more.iter().all(|l| l.starts_with("          more")));
        // Every word is kept, in order.
        let words = |t: &str| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(&wrapped), words(&long));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("load: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let inner = std::io::Error::other("request rate must be positive, got 0");
        let err = anyhow::Error::new(Outer(inner)).context("lab run");
        assert_eq!(
            one_line(&err),
            "lab run: load: request rate must be positive, got 0"
        );
        let err = anyhow::anyhow!("disk full").context("write report.json");
        assert_eq!(one_line(&err), "write report.json: disk full");
    }

    #[test]
    fn usage_errors_take_one_line() {
        use clap::Parser as _;
        let err = super::Cli::try_parse_from(["hoptrace", "trace", "--port", "0"])
            .err()
            .expect("port 0 is refused");
        let line = super::usage_error_line(&err.render().to_string());
        assert!(line.contains("--port") && !line.contains('\n'), "{line}");
        assert!(!line.contains("--help"), "{line}");
        let err = super::Cli::try_parse_from(["hoptrace", "compare"])
            .err()
            .expect("compare needs files");
        let line = super::usage_error_line(&err.render().to_string());
        assert!(line.contains("REPORTS") && !line.contains('\n'), "{line}");
    }
}
