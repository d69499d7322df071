//! Findings as terminal text: one block per finding, every line at most
//! [`WIDTH`] columns.

use std::fmt::Write as _;

use super::Finding;

/// Terminal width every text of hoptrace fits in, columns.
pub const WIDTH: usize = 100;

/// Wraps `text` at word boundaries so that `first` + the first line and
/// `indent` + each further line fit in [`WIDTH`] terminal columns (display
/// width, so `µ` is one column). Lines break at spaces only, never
/// inside a hyphenated name such as `kernel-other`; a word longer than a
/// line is broken. Ends with a newline.
pub fn wrap(first: &str, indent: &str, text: &str) -> String {
    let options = textwrap::Options::new(WIDTH)
        .initial_indent(first)
        .subsequent_indent(indent)
        .word_splitter(textwrap::WordSplitter::NoHyphenation)
        .break_words(true);
    let mut out = textwrap::fill(text.trim(), options);
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

#[cfg(test)]
mod wrap_tests {
    /// A category name is never split at its hyphen.
    #[test]
    fn hyphenated_names_stay_whole() {
        let text = format!("{} ingress-proxy (+0.25 ms)", "x".repeat(88));
        let wrapped = super::wrap("", "  ", &text);
        assert!(
            wrapped.contains("\n  ingress-proxy (+0.25 ms)"),
            "{wrapped}"
        );
    }
}
