//! One file per subcommand; each `run` returns the process exit code.

pub mod check;
pub mod cleanup;
pub mod compare;
pub mod lab;
pub mod trace;
