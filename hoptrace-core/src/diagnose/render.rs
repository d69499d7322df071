//! Findings as terminal text: one block per finding, every line at most
//! [`WIDTH`] columns.

use std::fmt::Write as _;

use super::Finding;

/// Terminal width every text of hoptrace fits in, columns.
pub const WIDTH: usize = 100;

/// Wraps `text` at word boundaries so that `first` + the first line and
/// `indent` + each further line fit in [`WIDTH`] columns (counted in
/// characters). A word longer than a line is cut.
pub fn wrap(first: &str, indent: &str, text: &str) -> String {
    let mut out = String::new();
    let mut line = first.to_owned();
    let mut line_len = first.chars().count();
    let mut empty = true;
    for word in text.split_whitespace() {
        let mut word: String = word.to_owned();
        let wlen = word.chars().count();
        if !empty && line_len + 1 + wlen > WIDTH {
            out.push_str(line.trim_end());
            out.push('\n');
            line = indent.to_owned();
            line_len = indent.chars().count();
            empty = true;
        }
        let room = WIDTH.saturating_sub(line_len + usize::from(!empty));
        if wlen > room {
            word = word.chars().take(room.max(1)).collect();
        }
        if !empty {
            line.push(' ');
            line_len += 1;
        }
        line_len += word.chars().count();
        line.push_str(&word);
        empty = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

/// One block per finding: severity, id and title, then evidence, cause,
/// advice and example flows, indented; blocks separated by a blank line.
pub fn render_findings(findings: &[Finding]) -> String {
    let mut out = String::new();
    if findings.is_empty() {
        out.push_str("No findings: nothing was measured.\n");
        return out;
    }
    for f in findings {
        let tag = format!("{:<9}", f.severity.name().to_uppercase());
        out.push_str(&wrap(&format!("{tag} {}: ", f.id), "          ", &f.title));
        for e in &f.evidence {
            out.push_str(&wrap("  evidence: ", "            ", e));
        }
        if !f.cause.is_empty() {
            out.push_str(&wrap("  cause:    ", "            ", &f.cause));
        }
        if !f.advice.is_empty() {
            out.push_str(&wrap("  advice:   ", "            ", &f.advice));
        }
        for x in &f.examples {
            let _ = write!(
                out,
                "{}",
                wrap(
                    "  example:  ",
                    "            ",
                    &format!(
                        "{} {} -> {} (encapsulation {})",
                        x.proto, x.src, x.dst, x.encap
                    )
                )
            );
        }
        out.push('\n');
    }
    out
}
