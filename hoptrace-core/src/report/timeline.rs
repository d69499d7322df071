//! The request timeline as a document section: joined requests
//! ([`crate::correlate::requests`]) summed into a `requests` section (a lab
//! run's, or a node report's from `hoptrace trace`), its terminal table,
//! and the sentence that says where the time per request goes.

use std::collections::BTreeMap;

use crate::{
    attribution::taxonomy::Category,
    correlate::requests::{Joined, Request, segment},
    report::{LabRequests, RequestCategory, RequestWaterfall, WaterfallSegment},
};

/// How many of the slowest requests the document keeps as waterfalls.
pub const SLOWEST: usize = 5;

/// Percentile `p` (0..=100) of sorted values, nearest rank.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Mean, p50 and p99 of the joined requests' own durations (first event
/// to the client's last read), µs: the client's latency where no load
/// generator measured it (`hoptrace trace`).
pub fn joined_latency(joined: &Joined) -> (f64, f64, f64) {
    let mut ns: Vec<u64> = joined
        .requests
        .iter()
        .map(|r| r.end_ns.saturating_sub(r.start_ns))
        .collect();
    ns.sort_unstable();
    let mean = ns.iter().sum::<u64>() as f64 / ns.len().max(1) as f64 / 1000.0;
    (
        mean,
        percentile(&ns, 50.0) as f64 / 1000.0,
        percentile(&ns, 99.0) as f64 / 1000.0,
    )
}

/// The `requests` section of a run from its joined requests and the load
/// generator's latency (mean, p50, p99 in µs).
pub fn requests_section(
    joined: &Joined,
    client: (f64, f64, f64),
    proxy_hold_mean_us: Option<f64>,
    notes: Vec<String>,
) -> LabRequests {
    let n = joined.requests.len();
    let mut per_category: BTreeMap<Category, Vec<u64>> = BTreeMap::new();
    let mut queue: BTreeMap<Category, u64> = BTreeMap::new();
    for r in &joined.requests {
        for (c, ns) in r.category_ns() {
            per_category.entry(c).or_default().push(ns);
        }
        for s in r
            .segments
            .iter()
            .filter(|s| s.name == segment::SOCKET_QUEUE)
        {
            *queue.entry(s.category).or_insert(0) += s.duration_ns;
        }
    }
    let mut categories = BTreeMap::new();
    for (c, mut values) in per_category {
        // Requests that did not cross the category count as 0.
        values.resize(n, 0);
        values.sort_unstable();
        let sum: u64 = values.iter().sum();
        categories.insert(
            c.name().to_owned(),
            RequestCategory {
                mean_us: sum as f64 / n.max(1) as f64 / 1000.0,
                p50_us: percentile(&values, 50.0) as f64 / 1000.0,
                p99_us: percentile(&values, 99.0) as f64 / 1000.0,
                socket_queue_mean_us: queue.get(&c).copied().unwrap_or(0) as f64
                    / n.max(1) as f64
                    / 1000.0,
            },
        );
    }
    let attributed_ns: u64 = joined
        .requests
        .iter()
        .map(|r| r.end_ns.saturating_sub(r.start_ns))
        .sum();
    let client_own_ns: u64 = joined
        .requests
        .iter()
        .flat_map(|r| r.segments.iter())
        .filter(|s| s.name == segment::CLIENT_WAIT || s.name == segment::CLIENT_PROCESS)
        .map(|s| s.duration_ns)
        .sum();
    let attributed_mean_us = attributed_ns as f64 / n.max(1) as f64 / 1000.0;
    let retransmit_ns: Vec<u64> = joined
        .requests
        .iter()
        .filter(|r| r.retransmitted())
        .map(|r| r.segment_ns(segment::TCP_RETRANSMIT, Category::KernelOther))
        .collect();
    let mut slowest: Vec<&Request> = joined.requests.iter().collect();
    slowest.sort_by_key(|r| std::cmp::Reverse(r.end_ns.saturating_sub(r.start_ns)));
    let slowest = slowest
        .into_iter()
        .take(SLOWEST)
        .map(|r| RequestWaterfall {
            start_ns: r.start_ns,
            total_us: (r.end_ns.saturating_sub(r.start_ns)) as f64 / 1000.0,
            proxied: r.proxied,
            segments: r
                .segments
                .iter()
                .map(|s| WaterfallSegment {
                    segment: s.name.to_owned(),
                    category: s.category.name().to_owned(),
                    start_ns: s.start_ns,
                    duration_us: s.duration_ns as f64 / 1000.0,
                })
                .collect(),
        })
        .collect();
    LabRequests {
        count: joined.seen,
        joined: n as u64,
        join_rate: if joined.seen == 0 {
            0.0
        } else {
            n as f64 / joined.seen as f64
        },
        client_mean_us: client.0,
        client_p50_us: client.1,
        client_p99_us: client.2,
        attributed_mean_us,
        coverage: if client.0 > 0.0 {
            attributed_mean_us / client.0
        } else {
            0.0
        },
        client_own_mean_us: client_own_ns as f64 / n.max(1) as f64 / 1000.0,
        categories,
        proxy_hold_mean_us,
        retransmitted: retransmit_ns.len() as u64,
        retransmit_mean_us: retransmit_ns.iter().sum::<u64>() as f64
            / retransmit_ns.len().max(1) as f64
            / 1000.0,
        slowest,
        notes,
    }
}

/// A duration in µs as people read it: `35 µs`, `1.20 ms`.
pub fn human_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// The terminal table (µs per request and share of the client's mean by
/// category) and the one sentence of where the time goes, of a lab run
/// (the client's mean is the load generator's).
pub fn render(requests: &LabRequests) -> String {
    let heading = format!(
        "Requests ({} of {} joined, {:.1}%; timeline covers {:.0}% of the client's mean {:.1} µs)",
        requests.joined,
        requests.count,
        100.0 * requests.join_rate,
        100.0 * requests.coverage,
        requests.client_mean_us
    );
    render_with(requests, &heading, "share of client mean")
}

/// [`render`] for one node's view (`trace`, `diagnose`, `lab
/// --node-view`): no load generator, so the mean is the joined requests'
/// own, from the first to the last event this node saw of each.
pub fn render_node_view(requests: &LabRequests) -> String {
    let heading = format!(
        "Requests ({} of {} joined, {:.1}%; {:.1} µs per request from the first to the last event this node saw of it)",
        requests.joined,
        requests.count,
        100.0 * requests.join_rate,
        requests.client_mean_us
    );
    render_with(requests, &heading, "share of this node's span")
}

/// The table, sentence and notes under `heading`; `share` names the last
/// column (each category's mean over the section's client mean).
fn render_with(requests: &LabRequests, heading: &str, share: &str) -> String {
    use crate::{diagnose::wrap, report::styled_table};
    let mut out = String::new();
    let mut table = styled_table(&[
        "category",
        "µs per request",
        "p50 µs",
        "p99 µs",
        "waiting to be read µs",
        share,
    ]);
    let mut rows: Vec<(&String, &RequestCategory)> = requests.categories.iter().collect();
    rows.sort_by(|a, b| b.1.mean_us.total_cmp(&a.1.mean_us));
    for (name, c) in &rows {
        table.add_row(vec![
            (*name).clone(),
            format!("{:.1}", c.mean_us),
            format!("{:.1}", c.p50_us),
            format!("{:.1}", c.p99_us),
            format!("{:.1}", c.socket_queue_mean_us),
            format!(
                "{:.1}%",
                100.0 * c.mean_us / requests.client_mean_us.max(f64::MIN_POSITIVE)
            ),
        ]);
    }
    crate::report::keep_name_words(&mut table);
    out.push_str(&wrap("", "", heading));
    out.push_str(&format!("{table}\n"));
    out.push_str(&wrap("", "", &sentence(requests)));
    if let Some(hold) = requests.proxy_hold_mean_us {
        out.push_str(&wrap(
            "",
            "",
            &format!(
                "The builtin proxy measured its own hold: {} per request (more than --proxy-delay asked: its tokio timer rounds up to the next millisecond tick and wakes late on a busy machine).",
                human_us(hold)
            ),
        ));
    }
    if requests.retransmitted > 0 {
        out.push_str(&wrap(
            "",
            "",
            &format!(
                "{} of {} joined requests waited for a TCP retransmission (tcp.retransmit, in kernel-other): {} each on average.",
                requests.retransmitted,
                requests.joined,
                human_us(requests.retransmit_mean_us)
            ),
        ));
    }
    for note in &requests.notes {
        out.push_str(&wrap("note: ", "      ", note));
    }
    out
}

/// One part of a request's time in [`Breakdown`]: a label (a process or
/// a datapath category), its mean time per request in µs, and what the
/// sentence says of it in brackets (`of which waiting to be read 250 µs`).
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// Who or what spent the time: `application`, `ingress proxy`,
    /// `client`, or a datapath category's name (`kernel-other`).
    pub label: String,
    /// Mean per request, µs.
    pub us: f64,
    /// Sub-parts of `us` worth naming (already worded), may be empty.
    pub of_which: Vec<String>,
}

/// Where a request's time goes, processes and network apart: the
/// figures of [`sentence`]. `processes` + `network` + `outside` is the
/// client's mean (`LabRequests::client_mean_us`).
#[derive(Clone, Debug, PartialEq)]
pub struct Breakdown {
    /// The client's mean latency, µs: what the parts add up to.
    pub total_us: f64,
    /// The processes' own time (application, ingress proxy, client; each
    /// with the bytes that waited in its sockets), largest first, µs.
    pub processes: Vec<Part>,
    /// The kernel's datapath, every datapath category including
    /// `kernel-other` (the rest of the kernel: IP input/output, qdisc,
    /// delivery to the socket), largest first, µs.
    pub network: Vec<Part>,
    /// The client's mean less the joined requests' mean (time the
    /// timeline does not cover: the load generator's own time before its
    /// write and after its read), µs; negative when the joined requests
    /// took longer on average than the client's mean.
    pub outside_us: f64,
}

impl Breakdown {
    /// Sum of the process parts, µs.
    pub fn processes_us(&self) -> f64 {
        self.processes.iter().map(|p| p.us).sum()
    }

    /// Sum of the network parts, µs.
    pub fn network_us(&self) -> f64 {
        self.network.iter().map(|p| p.us).sum()
    }
}

/// The request timeline's per-request means split into processes and
/// network (every datapath category, `kernel-other` included), so that
/// the parts add up to the client's mean.
pub fn breakdown(requests: &LabRequests) -> Breakdown {
    let mut processes = Vec::new();
    let mut network = Vec::new();
    for c in Category::ALL {
        let Some(v) = requests.categories.get(c.name()) else {
            continue;
        };
        if v.mean_us == 0.0 {
            continue;
        }
        if c.is_datapath() {
            network.push(Part {
                label: c.name().to_owned(),
                us: v.mean_us,
                of_which: Vec::new(),
            });
            continue;
        }
        let label = match c {
            Category::IngressProxy => "ingress proxy",
            other => other.name(),
        };
        let mut of_which = Vec::new();
        if c == Category::Client && requests.client_own_mean_us >= 1.0 {
            of_which.push(format!(
                "its own timer and work {}",
                human_us(requests.client_own_mean_us)
            ));
        }
        if v.socket_queue_mean_us >= 0.005 * v.mean_us.max(1.0) {
            of_which.push(format!(
                "waiting to be read {}",
                human_us(v.socket_queue_mean_us)
            ));
        }
        processes.push(Part {
            label: label.to_owned(),
            us: v.mean_us,
            of_which,
        });
    }
    processes.sort_by(|a, b| b.us.total_cmp(&a.us));
    network.sort_by(|a, b| b.us.total_cmp(&a.us));
    Breakdown {
        total_us: requests.client_mean_us,
        processes,
        network,
        outside_us: requests.client_mean_us - requests.attributed_mean_us,
    }
}

/// Parts worded `label time [of which ...]`, largest first; parts under
/// 0.5 µs (shown as 0 µs) are summed into one `others` part so that the
/// named parts still add up to the group.
fn word_parts(parts: &[Part]) -> String {
    let mut words = Vec::new();
    let mut small = 0.0;
    for p in parts {
        if p.us.abs() < 0.5 {
            small += p.us;
            continue;
        }
        let mut w = format!("{} {}", p.label, human_us(p.us));
        if !p.of_which.is_empty() {
            w.push_str(&format!(" [of which {}]", p.of_which.join(", ")));
        }
        words.push(w);
    }
    if small.abs() >= 0.05 {
        words.push(format!("others {small:.1} µs"));
    }
    words.join(", ")
}

/// The one sentence of where a request's time goes, processes and network
/// apart, each with its parts, so that the parts add up to the request:
/// "Of 1.77 ms per request: processes 1.51 ms (application 1.20 ms,
/// ingress proxy 310 µs [of which waiting to be read 250 µs]), network
/// 260 µs (kernel-other 204 µs, kube-proxy 35 µs, encapsulation 21 µs)."
/// Time the timeline does not cover (over 1 % of the client's mean) is
/// named last. Figures from [`breakdown`].
pub fn sentence(requests: &LabRequests) -> String {
    let b = breakdown(requests);
    let mut groups = Vec::new();
    for (name, parts, us) in [
        ("processes", &b.processes, b.processes_us()),
        ("network", &b.network, b.network_us()),
    ] {
        if parts.is_empty() {
            continue;
        }
        groups.push(format!("{name} {} ({})", human_us(us), word_parts(parts)));
    }
    let threshold = 0.01 * b.total_us.abs();
    if b.outside_us > threshold {
        groups.push(format!(
            "outside the timeline {} (the load generator's own time before its write and after its read)",
            human_us(b.outside_us)
        ));
    }
    let mut s = format!("Of {} per request: ", human_us(b.total_us));
    s.push_str(&groups.join(", "));
    if b.outside_us < -threshold {
        s.push_str(&format!(
            "; the joined requests took {} more than the client's mean",
            human_us(-b.outside_us)
        ));
    }
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::requests::{RequestSegment, segment};

    fn request(start: u64, parts: &[(&'static str, Category, u64)]) -> Request {
        let mut t = start;
        let mut segments = Vec::new();
        for &(name, category, ns) in parts {
            segments.push(RequestSegment {
                name,
                category,
                start_ns: t,
                duration_ns: ns,
            });
            t += ns;
        }
        Request {
            start_ns: start,
            write_ns: start,
            end_ns: t,
            proxied: true,
            segments,
        }
    }

    /// Two requests of 1.77 ms: proxy, application, datapath and stack.
    fn two_typical_requests() -> Joined {
        let a = request(
            0,
            &[
                (segment::PROXY_REQUEST, Category::IngressProxy, 60_000),
                (segment::SOCKET_QUEUE, Category::IngressProxy, 250_000),
                (segment::APP_SERVICE, Category::Application, 1_200_000),
                (segment::DATAPATH, Category::KubeProxy, 35_000),
                (segment::DATAPATH, Category::Encapsulation, 21_000),
                (segment::STACK, Category::KernelOther, 204_000),
            ],
        );
        Joined {
            seen: 2,
            requests: vec![a.clone(), a],
        }
    }

    #[test]
    fn section_sums_categories_per_request_and_the_sentence_names_them() {
        let joined = two_typical_requests();
        let section = requests_section(&joined, (1770.0, 1700.0, 2000.0), None, Vec::new());
        assert_eq!(section.joined, 2);
        assert!((section.join_rate - 1.0).abs() < 1e-9);
        assert!((section.attributed_mean_us - 1770.0).abs() < 1e-9);
        assert!((section.coverage - 1.0).abs() < 1e-9);
        let proxy = &section.categories["ingress-proxy"];
        assert!((proxy.mean_us - 310.0).abs() < 1e-9);
        assert!((proxy.socket_queue_mean_us - 250.0).abs() < 1e-9);
        let s = sentence(&section);
        assert_eq!(
            s,
            "Of 1.77 ms per request: processes 1.51 ms (application 1.20 ms, ingress proxy 310 µs [of which waiting to be read 250 µs]), network 260 µs (kernel-other 204 µs, kube-proxy 35 µs, encapsulation 21 µs)."
        );
    }

    /// A request that waited for a retransmission is counted, its
    /// `tcp.retransmit` averaged over such requests only, and the terminal
    /// says so; without one, neither.
    #[test]
    fn retransmitted_requests_are_counted_and_named() {
        let mut joined = two_typical_requests();
        let plain = requests_section(&joined, (1770.0, 1700.0, 2000.0), None, Vec::new());
        assert_eq!(plain.retransmitted, 0);
        assert_eq!(plain.retransmit_mean_us, 0.0);
        assert!(!render(&plain).contains("retransmission"));
        joined.requests.push(request(
            0,
            &[
                (segment::APP_SERVICE, Category::Application, 100_000),
                (segment::TCP_RETRANSMIT, Category::KernelOther, 204_000_000),
                (segment::STACK, Category::KernelOther, 30_000),
            ],
        ));
        joined.seen = 3;
        let section = requests_section(&joined, (70_000.0, 1800.0, 204_000.0), None, Vec::new());
        assert_eq!(section.retransmitted, 1);
        assert!((section.retransmit_mean_us - 204_000.0).abs() < 1e-6);
        assert!(
            render(&section).contains("1 of 3 joined requests waited for a TCP retransmission"),
            "{}",
            render(&section)
        );
    }

    /// Issue 10: the sentence says where the time goes, processes and
    /// network apart, and its parts add up to the request: the kernel's
    /// other time is one of them (it was left out, so the datapath's parts
    /// did not add up to it), and so is time outside the timeline.
    #[test]
    fn the_sentence_names_every_part_and_they_add_up_to_the_request() {
        let a = request(
            0,
            &[
                (segment::CLIENT_WAIT, Category::Client, 900_000),
                (segment::DATAPATH, Category::Cni, 40_000),
                (segment::DATAPATH, Category::KubeProxy, 480_000),
                (segment::STACK, Category::KernelOther, 310_000),
                (segment::DATAPATH, Category::Conntrack, 300),
                (segment::APP_SERVICE, Category::Application, 90_000),
                (segment::SOCKET_QUEUE, Category::Application, 30_000),
                (segment::SOCKET_QUEUE, Category::Client, 20_000),
            ],
        );
        let joined = Joined {
            seen: 1,
            requests: vec![a],
        };
        // The load generator measured 2,000 µs; the joined request covers
        // 1,870.3 µs of it.
        let section = requests_section(&joined, (2000.0, 0.0, 0.0), None, Vec::new());
        let b = breakdown(&section);
        let labels = |parts: &[Part]| parts.iter().map(|p| p.label.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&b.processes), ["client", "application"]);
        assert_eq!(
            labels(&b.network),
            ["kube-proxy", "kernel-other", "cni", "conntrack"]
        );
        assert!((b.processes_us() - 1040.0).abs() < 1e-6, "{b:?}");
        assert!((b.network_us() - 830.3).abs() < 1e-6, "{b:?}");
        assert!((b.outside_us - 129.7).abs() < 1e-6, "{b:?}");
        assert!(
            (b.processes_us() + b.network_us() + b.outside_us - section.client_mean_us).abs()
                < 1e-6,
            "the parts add up to the client's mean: {b:?}"
        );
        assert_eq!(
            sentence(&section),
            "Of 2.00 ms per request: processes 1.04 ms (client 920 µs [of which its own timer and work 900 µs, waiting to be read 20 µs], application 120 µs [of which waiting to be read 30 µs]), network 830 µs (kube-proxy 480 µs, kernel-other 310 µs, cni 40 µs, others 0.3 µs), outside the timeline 130 µs (the load generator's own time before its write and after its read)."
        );
        // A trace has no load generator: the joined requests are the
        // whole, and nothing lies outside the timeline.
        let mut traced = section.clone();
        traced.client_mean_us = traced.attributed_mean_us;
        assert!(!sentence(&traced).contains("outside"));
        // Joined requests longer than the client's mean are said so.
        traced.client_mean_us = 1500.0;
        assert!(
            sentence(&traced)
                .ends_with("; the joined requests took 370 µs more than the client's mean."),
            "{}",
            sentence(&traced)
        );
    }

    #[test]
    fn a_category_a_request_did_not_cross_counts_as_zero() {
        let a = request(0, &[(segment::APP_SERVICE, Category::Application, 100_000)]);
        let b = request(
            0,
            &[
                (segment::APP_SERVICE, Category::Application, 100_000),
                (segment::PROXY_REQUEST, Category::IngressProxy, 300_000),
            ],
        );
        let joined = Joined {
            seen: 3,
            requests: vec![a, b],
        };
        let section = requests_section(&joined, (500.0, 0.0, 0.0), Some(300.0), Vec::new());
        assert!((section.categories["ingress-proxy"].mean_us - 150.0).abs() < 1e-9);
        assert!((section.categories["ingress-proxy"].p50_us - 0.0).abs() < 1e-9);
        assert!((section.join_rate - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(section.slowest[0].total_us, 400.0);
    }

    #[test]
    fn the_rendered_timeline_fits_100_columns() {
        let joined = two_typical_requests();
        let note = "one node's view: no load generator, the client's figures are the joined \
                    requests' own; legs through other nodes keep their time in stack";
        let section = requests_section(
            &joined,
            (1770.0, 1700.0, 2000.0),
            Some(2000.0),
            vec![note.to_owned()],
        );
        let text = render(&section);
        for line in text.lines() {
            assert!(
                line.chars().count() <= crate::diagnose::WIDTH,
                "wider than 100 columns: {line}"
            );
        }
        assert!(text.contains("note: one node's view"));
        assert!(text.contains("The builtin proxy measured its own hold"));
    }
}
