//! The one-line verdict on top of `hoptrace compare`: which column is
//! faster per request, by how much, and which categories make the
//! difference, in the slower column's terms, e.g. "calico-bgp is 0.41 ms
//! per request faster than flannel-vxlan, which spends more in
//! encapsulation (+0.25 ms) and kube-proxy (+0.10 ms)". Differences are
//! slower − faster: a positive one explains the difference, a negative one
//! offsets part of it ("and less in …"). The request timeline's `client`
//! category (the load generator's or the client's own time, the same
//! program in every column) is never named as what the slower column
//! spends: its difference closes the line ("; the client's time differs
//! by …"). A difference smaller than two standard errors of the columns'
//! mean client latencies (from their histograms) is said to be within
//! the runs' noise.

use super::Comparison;
use super::summary::CategoryTable;

/// Categories named in the verdict, at most.
const NAMED: usize = 3;

/// The request timeline's category of the client's own time.
const CLIENT: &str = "client";

/// A duration in µs for a sentence: `0.41 ms` from 100 µs up, else
/// `35 µs` (one decimal below 10 µs).
pub fn human_us(us: f64) -> String {
    let magnitude = us.abs();
    if magnitude >= 100.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if magnitude >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// A signed duration: `+35 µs`, `−0.25 ms` (with a minus sign, U+2212).
pub fn signed_us(us: f64) -> String {
    let text = human_us(us.abs());
    if us < 0.0 {
        format!("−{text}")
    } else {
        format!("+{text}")
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Whole time per unit of `column`: its total, else the sum of its
/// categories.
fn whole(table: &CategoryTable, column: usize) -> f64 {
    table.totals[column].unwrap_or_else(|| table.attributed(column))
}

/// The verdict for `comparison` (see the module docs). With more than two
/// columns it compares the fastest with the slowest; with one it says what
/// that column's time is made of.
pub fn verdict(comparison: &Comparison) -> String {
    let table = comparison.category_table();
    let labels: Vec<&str> = comparison
        .inputs
        .iter()
        .map(|input| input.label.as_str())
        .collect();
    let unit = table.basis.unit();
    match labels.len() {
        0 => return "nothing to compare".to_owned(),
        1 => {
            let mut text = format!("{}: {} per {unit}", labels[0], human_us(whole(&table, 0)));
            if let Some(first) = table.categories.first() {
                text.push_str(&format!(
                    ", most of it {first} {}",
                    human_us(table.values[0][0])
                ));
            }
            text.push_str(" (one column: nothing to compare)");
            return text;
        }
        _ => {}
    }
    let wholes: Vec<f64> = (0..labels.len()).map(|c| whole(&table, c)).collect();
    let fast = (0..labels.len())
        .min_by(|a, b| wholes[*a].total_cmp(&wholes[*b]))
        .unwrap_or(0);
    let slow = (0..labels.len())
        .max_by(|a, b| wholes[*a].total_cmp(&wholes[*b]))
        .unwrap_or(0);
    let diff = wholes[slow] - wholes[fast];
    let of_n = if labels.len() > 2 {
        format!(" (fastest and slowest of {})", labels.len())
    } else {
        String::new()
    };
    if fast == slow || diff < 1.0_f64.max(0.01 * wholes[slow]) {
        return format!(
            "{} and {} are within {} per {unit} of each other{of_n}",
            labels[fast],
            labels[slow],
            human_us(diff)
        );
    }
    // Per category: the slow column minus the fast one, largest first.
    let mut deltas: Vec<(&str, f64)> = table
        .categories
        .iter()
        .enumerate()
        .map(|(index, name)| {
            (
                name.as_str(),
                table.values[index][slow] - table.values[index][fast],
            )
        })
        .filter(|(_, delta)| delta.abs() >= 1.0_f64.max(0.05 * diff))
        .collect();
    deltas.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    // The client's own time (the load generator's timer, its wake-ups and
    // connects) is the same program in every column: what differs there
    // is said last, apart, not as what the slower column spends.
    let client = deltas
        .iter()
        .position(|(name, _)| *name == CLIENT)
        .map(|i| deltas.remove(i).1);
    deltas.truncate(NAMED);
    let listed = |positive: bool| -> Vec<String> {
        deltas
            .iter()
            .filter(|(_, delta)| (*delta > 0.0) == positive)
            .map(|(name, delta)| format!("{name} ({})", signed_us(*delta)))
            .collect()
    };
    let (more, less) = (listed(true), listed(false));
    let mut text = format!(
        "{} is {} per {unit} faster than {}",
        labels[fast],
        human_us(diff),
        labels[slow]
    );
    if deltas.is_empty() {
        text.push_str(
            ": no category of the datapath or the servers differs by more than 5% of that",
        );
    } else {
        let mut parts = Vec::new();
        if !more.is_empty() {
            parts.push(format!("more in {}", and_list(&more)));
        }
        if !less.is_empty() {
            parts.push(format!("less in {}", and_list(&less)));
        }
        text.push_str(", which spends ");
        text.push_str(&parts.join(" and "));
    }
    if let Some(delta) = client {
        text.push_str(&format!(
            "; the client's time differs by {}",
            signed_us(delta)
        ));
    }
    // What the categories do not explain (the client's own stack and
    // scheduling outside the timeline, or hooks a run lacked).
    let explained = table.attributed(slow) - table.attributed(fast);
    let rest = diff - explained;
    if table.totals[fast].is_some() && table.totals[slow].is_some() && rest.abs() >= 0.1 * diff {
        text.push_str(&format!(
            "; {} of the difference is outside the measured categories",
            signed_us(rest)
        ));
    }
    // Is the difference more than the runs' own scatter? Two standard
    // errors of the difference of the means, from each column's client
    // histogram. Requests of one run are not independent (they queue
    // behind each other), so this understates the noise: a difference
    // inside it is noise, one outside it may still be.
    let noise = match (
        comparison.inputs[fast]
            .client_latency()
            .and_then(standard_error),
        comparison.inputs[slow]
            .client_latency()
            .and_then(standard_error),
    ) {
        (Some(a), Some(b)) => Some(2.0 * a.hypot(b)),
        _ => None,
    };
    if let Some(noise) = noise.filter(|noise| diff < *noise) {
        text.push_str(&format!(
            "; that is within the runs' noise (±{}, two standard errors of the means): run longer",
            human_us(noise)
        ));
    }
    text.push_str(&of_n);
    text
}

/// Standard error of a column's mean client latency, µs: its histogram's
/// sample standard deviation over the square root of its count. `None`
/// with fewer than two samples.
fn standard_error(latency: &hoptrace_core::report::ClientLatency) -> Option<f64> {
    let n = latency.histogram.iter().map(|b| b.2).sum::<u64>() as f64;
    if n < 2.0 {
        return None;
    }
    let mean = latency
        .histogram
        .iter()
        .map(|&(v, _, c)| v as f64 * c as f64)
        .sum::<f64>()
        / n;
    let variance = latency
        .histogram
        .iter()
        .map(|&(v, _, c)| c as f64 * (v as f64 - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    Some((variance / n).sqrt())
}
