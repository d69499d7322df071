//! One file per subcommand; each `run` returns the process exit code.

pub mod agent;
pub mod check;
pub mod cleanup;
pub mod compare;
pub mod diagnose;
pub mod lab;
pub mod trace;

use std::{fmt::Display, str::FromStr};

use clap::builder::{PossibleValuesParser, TypedValueParser as _};

/// A clap parser that accepts the names of `all` (shown by `--help`) and
/// parses them with `T`'s `FromStr`.
pub(crate) fn choice<T>(all: &[T]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: Display + FromStr + Clone + Send + Sync + 'static,
{
    let names: Vec<String> = all.iter().map(ToString::to_string).collect();
    PossibleValuesParser::new(names).map(|name| {
        name.parse::<T>()
            .unwrap_or_else(|_| unreachable!("every possible value parses"))
    })
}

/// A duration such as `10s` or `2m`, more than zero (`0s` would attach
/// every hook only to detach it at once).
pub(crate) fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.is_zero() {
        return Err("must be more than zero (e.g. 10s)".into());
    }
    Ok(duration)
}
