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

/// Longest `--duration` of `trace`, `diagnose` and `lab`: a day. Longer
/// runs are the agent's job (`hoptrace agent`), and a typo such as `100000h`
/// would otherwise hold the hooks for years.
pub(crate) const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A duration such as `10s`, `500ms` or `2m`, more than zero (`0s` would
/// attach every hook only to detach it at once) and at most
/// [`MAX_DURATION`].
pub(crate) fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    // humantime's own errors ("expected number at 0") do not say what a
    // duration looks like.
    let duration = humantime::parse_duration(text.trim()).map_err(|_| {
        format!("{text:?} is not a duration: a number and a unit, such as 10s, 500ms or 2m")
    })?;
    if duration.is_zero() {
        return Err("must be more than zero (e.g. 10s)".into());
    }
    if duration > MAX_DURATION {
        return Err(format!(
            "{} is too long: at most {}h (for longer, run `hoptrace agent`)",
            text.trim(),
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(duration)
}

/// `lab --prefix`: the rules of the lab's namespace names
/// ([`hoptrace_lab::topology::check_prefix`]), checked before anything is
/// built.
pub(crate) fn lab_prefix(text: &str) -> Result<String, String> {
    hoptrace_lab::topology::check_prefix(text)?;
    Ok(text.to_owned())
}

/// `--node-view` of `lab`: a lab node's name, `node0` to `node2`, as its
/// index (checked against `--nodes` once both are known).
pub(crate) fn lab_node(text: &str) -> Result<usize, String> {
    text.strip_prefix("node")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= 2 && text.len() == 5)
        .ok_or_else(|| format!("{text:?} is not a lab node (node0, node1 or node2)"))
}

/// `--netns` and `--iface` of `trace`/`diagnose`: the namespace file
/// exists and is a namespace, and every interface exists in it. Checked
/// after the privileges and before anything is probed, attached or
/// entered for tracing. `Err` is the one-line refusal (exit 2).
pub(crate) fn check_node_args(
    netns: Option<&std::path::Path>,
    ifaces: &[String],
) -> Result<(), String> {
    if let Some(path) = netns {
        hoptrace_core::node::check_netns_path(path).map_err(|e| format!("--netns {e}"))?;
    }
    let missing = hoptrace_core::node::missing_interfaces(netns, ifaces)
        .map_err(|e| hoptrace_core::kernel::capabilities::error_chain(&e))?;
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(format!(
            "--iface {one}: no such interface on this node (see `ip link`)"
        )),
        many => Err(format!(
            "--iface: no such interfaces on this node: {} (see `ip link`)",
            many.join(", ")
        )),
    }
}

/// A file to write at the end of a run (`--json`, `--html`,
/// `--ready-file`): its directory must exist now, so that a typo is
/// reported before anything is attached or built, not after the trace.
pub(crate) fn output_file(text: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(text);
    if text.is_empty() || text.ends_with('/') {
        return Err("needs a file name".into());
    }
    if path.is_dir() {
        return Err("is a directory; give a file name".into());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(_) => Err(format!("directory {} does not exist", dir.display())),
    }
}

/// `--ip`: a network such as `10.96.0.0/12`, or one address (`10.0.0.5`
/// is `10.0.0.5/32`, an IPv6 address `/128`).
pub(crate) fn flow_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(addr));
    }
    if let Some((addr, prefix)) = text.split_once('/') {
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("prefix length {prefix:?} is not a number from 0 to {max}"))?;
        return ipnet::IpNet::new(addr, prefix)
            .map_err(|_| format!("prefix length /{prefix} is too long (at most /{max})"));
    }
    Err(format!(
        "{text:?} is not an IP address or network (e.g. 10.96.0.0/12)"
    ))
}

/// A finite request rate above zero (requests per second).
pub(crate) fn positive_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err("must be more than zero requests per second".into());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::{flow_net, lab_node, lab_prefix, output_file, positive_duration, positive_rate};

    #[test]
    fn bad_input_is_refused_with_its_cause() {
        assert_eq!(flow_net("10.0.0.5").unwrap().to_string(), "10.0.0.5/32");
        assert_eq!(flow_net("fd00::1").unwrap().to_string(), "fd00::1/128");
        assert_eq!(
            flow_net("10.96.0.0/12").unwrap().to_string(),
            "10.96.0.0/12"
        );
        let err = flow_net("10.0.0.0/99").unwrap_err();
        assert!(err.contains("too long") && err.contains("/32"), "{err}");
        assert!(flow_net("10.0.0/8").is_err());
        assert!(flow_net("fd00::/129").unwrap_err().contains("/128"));
        assert!(positive_rate("0").is_err());
        assert!(positive_rate("-3").is_err());
        assert!(positive_rate("NaN").is_err());
        assert_eq!(positive_rate("2.5"), Ok(2.5));
        assert!(positive_duration("0s").is_err());
        let err = positive_duration("abc").unwrap_err();
        assert!(
            err.contains("not a duration") && err.contains("10s"),
            "{err}"
        );
        assert!(positive_duration("10").unwrap_err().contains("unit"));
        assert!(
            positive_duration("25h")
                .unwrap_err()
                .contains("at most 24h")
        );
        assert_eq!(
            positive_duration("24h"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert!(lab_prefix("a/b").is_err());
        assert!(lab_prefix("").is_err());
        assert!(lab_prefix(&"x".repeat(41)).is_err());
        assert_eq!(lab_prefix("ht-lab-"), Ok("ht-lab-".to_owned()));
        assert_eq!(lab_node("node1"), Ok(1));
        assert!(lab_node("node3").is_err());
        assert!(lab_node("node01").is_err());
        assert!(
            lab_node("n1")
                .unwrap_err()
                .contains("node0, node1 or node2")
        );
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("r.json");
        assert!(output_file(ok.to_str().unwrap()).is_ok());
        let missing = dir.path().join("nope/r.json");
        let err = output_file(missing.to_str().unwrap()).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        assert!(output_file(dir.path().to_str().unwrap()).is_err());
        assert!(
            output_file("r.json").is_ok(),
            "the current directory exists"
        );
    }
}
