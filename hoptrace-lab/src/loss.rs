//! `--drop-probability P`: real packet loss in the lab, so that TCP
//! retransmits (this kernel has no netem). The pod that sends requests to
//! the service (the ingress proxy, or the client without one) drops that
//! fraction of the data segments that arrive from the service (TCP with
//! PSH set: the backends' HTTP responses), with an iptables `statistic`
//! rule in its own namespace's INPUT chain: after the nodes' datapath, as
//! a loss on the wire would be, so the lost packet's journey is seen.
//! Handshakes, pure ACKs and FINs pass, so loss delays responses (a tail
//! loss probe or a retransmission timeout per lost segment) without
//! failing connects. The rule lives in the pod's namespace and goes with
//! it at teardown.

use std::net::SocketAddrV4;

use crate::netns::{self, NetnsError};

/// The largest `--drop-probability`: beyond it a response is more often
/// lost than delivered, and repeated losses back off for seconds.
pub const MAX_DROP_PROBABILITY: f64 = 0.5;

/// Parses `--drop-probability`: a fraction in `(0, 0.5]`.
///
/// # Errors
/// A one-line reason for anything else (`0`, `1`, `5%`, `abc`).
pub fn parse_drop_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= MAX_DROP_PROBABILITY => Ok(p),
        _ => Err(format!(
            "{text:?} is not a drop probability: a fraction above 0 and at most {MAX_DROP_PROBABILITY} (e.g. 0.05)"
        )),
    }
}

/// The iptables arguments of the drop rule for responses from `from`.
pub fn drop_rule(from: SocketAddrV4, probability: f64) -> Vec<String> {
    [
        "-w",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "-s",
        &from.ip().to_string(),
        "--sport",
        &from.port().to_string(),
        "--tcp-flags",
        "PSH",
        "PSH",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        &format!("{probability}"),
        "-m",
        "comment",
        "--comment",
        "hoptrace lab --drop-probability",
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Adds the drop rule for responses from `from` (the address the pod
/// connects to) in namespace `ns`.
///
/// # Errors
/// [`NetnsError`] when iptables is missing or refuses the rule.
pub fn drop_responses(ns: &str, from: SocketAddrV4, probability: f64) -> Result<(), NetnsError> {
    let mut argv = vec!["iptables".to_owned()];
    argv.extend(drop_rule(from, probability));
    netns::run_in(ns, &argv).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_probability_is_a_fraction_up_to_one_half() {
        assert_eq!(parse_drop_probability("0.05"), Ok(0.05));
        assert_eq!(parse_drop_probability("0.5"), Ok(0.5));
        for bad in ["0", "-0.1", "0.6", "1", "5%", "abc", "NaN", "inf"] {
            let err = parse_drop_probability(bad).unwrap_err();
            assert!(
                !err.contains('\n') && err.contains("drop probability"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_rule_drops_only_data_segments_from_the_port() {
        let rule = drop_rule(SocketAddrV4::new([10, 96, 0, 10].into(), 80), 0.05).join(" ");
        assert!(
            rule.starts_with("-w -A INPUT -p tcp -s 10.96.0.10 --sport 80 --tcp-flags PSH PSH")
        );
        assert!(rule.contains("--mode random --probability 0.05"));
        assert!(rule.ends_with("-j DROP"));
    }
}
