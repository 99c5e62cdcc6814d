//! Evaluation results: aligned plain-text tables, side-by-side comparisons, and JSON.
//!
//! Scores print as percentages with two decimals, as the papers print them; latencies print in
//! milliseconds. Every string that reaches a table (strategy, dataset and metric names, which
//! may come from a user's JSON file) goes through [`terminal_safe`] first, so no control
//! character or bidirectional override reaches the terminal and no cell grows past
//! [`MAX_CELL_CHARS`].

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::clip;
use crate::metrics::{LatencySummary, Metric};

/// The widest a table cell may be, in characters; longer strings end in `…`.
pub const MAX_CELL_CHARS: usize = 40;

/// One strategy's results on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyResult {
    /// The strategy's name, as `--compare` refers to it.
    pub strategy: String,
    /// The dataset and split, e.g. `CIRR val`.
    pub dataset: String,
    /// How many queries were evaluated.
    pub queries: usize,
    /// The scores, in the order to print them.
    pub metrics: Vec<Metric>,
    /// Per-query latency percentiles, when they were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
}

/// The JSON document [`to_json`] writes and [`from_json`] reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ResultsFile {
    results: Vec<StrategyResult>,
}

/// Why a comparison could not be put together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The `--compare` list named no strategy.
    #[error("--compare needs at least one strategy name, e.g. --compare dense,lincir")]
    EmptyCompareList,
    /// The `--compare` list named a strategy twice.
    #[error("--compare names {0:?} more than once")]
    RepeatedName(String),
    /// The `--compare` list named a strategy without results.
    #[error("there are no results for strategy {name:?}; there are results for: {available}")]
    UnknownStrategy {
        /// The name asked for.
        name: String,
        /// The names there are results for.
        available: String,
    },
    /// Two result sets carry the same strategy name, so a name cannot pick one.
    #[error("two result sets are both named {0:?}")]
    AmbiguousName(String),
}

/// Whether `c` must not reach a terminal as is: control characters (C0, DEL, C1: escape
/// sequences, carriage returns, line breaks), bidirectional overrides and isolates (which
/// reorder what is displayed), zero-width characters and line/paragraph separators.
fn is_unsafe_for_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// `s` made safe to print in a terminal cell: every unsafe character (see above) is shown as
/// its escape, e.g. `\u{1b}`, and the result is cut to at most `max_chars` characters, ending
/// in `…` when cut. Other non-ASCII text is kept; a double-width character may misalign its
/// column, which is cosmetic.
pub fn terminal_safe(s: &str, max_chars: usize) -> String {
    let pieces: Vec<String> = s
        .chars()
        .map(|c| {
            if is_unsafe_for_terminal(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.chars().count()).sum();
    if total <= max_chars {
        return pieces.concat();
    }
    if max_chars == 0 {
        return String::new();
    }
    // Whole pieces only, so an escape is never cut in half; leave room for the ellipsis.
    let mut out = String::new();
    let mut len = 0;
    for piece in &pieces {
        let n = piece.chars().count();
        if len + n > max_chars - 1 {
            break;
        }
        out.push_str(piece);
        len += n;
    }
    out.push('…');
    out
}

fn cell(s: &str) -> String {
    terminal_safe(s, MAX_CELL_CHARS)
}

fn percent(value: f64) -> String {
    format!("{:.2}", value * 100.0)
}

fn millis(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Lays out rows as columns separated by two spaces: the first column left-aligned, the others
/// right-aligned (numbers), with a rule under the header row.
fn grid(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (j, width) in widths.iter().enumerate() {
            let c = row.get(j).map_or("", String::as_str);
            let pad = " ".repeat(width - c.chars().count());
            if j > 0 {
                line.push_str("  ");
            }
            if j == 0 {
                line.push_str(c);
                line.push_str(&pad);
            } else {
                line.push_str(&pad);
                line.push_str(c);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            let rule_len = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
            out.push_str(&"-".repeat(rule_len));
            out.push('\n');
        }
    }
    out
}

const FOOTNOTE: &str = "Scores are percentages; latency percentiles are nearest-rank.\n";

/// One strategy's table: a title line, metric rows, then latency p50/p95/p99 when measured.
pub fn render_table(result: &StrategyResult) -> String {
    let mut rows = vec![vec!["metric".to_owned(), "value".to_owned()]];
    for m in &result.metrics {
        rows.push(vec![cell(&m.name), percent(m.value)]);
    }
    if let Some(l) = &result.latency {
        for (name, d) in [
            ("latency p50", l.p50),
            ("latency p95", l.p95),
            ("latency p99", l.p99),
        ] {
            rows.push(vec![name.to_owned(), millis(d)]);
        }
    }
    format!(
        "{} on {} ({} queries)\n{}{FOOTNOTE}",
        cell(&result.strategy),
        cell(&result.dataset),
        result.queries,
        grid(&rows)
    )
}

/// Several strategies side by side, one column each in the order given: the dataset and query
/// count, then every metric any of them has (in first-seen order; `-` where one lacks it), then
/// latency p50/p95/p99.
pub fn render_comparison(results: &[&StrategyResult]) -> String {
    let mut header = vec!["metric".to_owned()];
    header.extend(results.iter().map(|r| cell(&r.strategy)));
    let mut rows = vec![header];

    let mut row = |name: &str, value: &dyn Fn(&StrategyResult) -> Option<String>| {
        let mut r = vec![cell(name)];
        r.extend(
            results
                .iter()
                .map(|res| value(res).unwrap_or_else(|| "-".to_owned())),
        );
        rows.push(r);
    };
    row("dataset", &|r| Some(cell(&r.dataset)));
    row("queries", &|r| Some(r.queries.to_string()));

    let mut seen = HashSet::new();
    let names: Vec<&str> = results
        .iter()
        .flat_map(|r| r.metrics.iter().map(|m| m.name.as_str()))
        .filter(|n| seen.insert(*n))
        .collect();
    for name in names {
        row(name, &|r| {
            r.metrics
                .iter()
                .find(|m| m.name == name)
                .map(|m| percent(m.value))
        });
    }
    if results.iter().any(|r| r.latency.is_some()) {
        row("latency p50", &|r| r.latency.map(|l| millis(l.p50)));
        row("latency p95", &|r| r.latency.map(|l| millis(l.p95)));
        row("latency p99", &|r| r.latency.map(|l| millis(l.p99)));
    }
    format!("{}{FOOTNOTE}", grid(&rows))
}

/// Picks the results `--compare a,b` names, in that order. Names are comma-separated and
/// trimmed; each must name exactly one result set.
pub fn select_for_comparison<'a>(
    results: &'a [StrategyResult],
    list: &str,
) -> Result<Vec<&'a StrategyResult>, ReportError> {
    let mut names_seen = HashSet::new();
    for r in results {
        if !names_seen.insert(r.strategy.as_str()) {
            return Err(ReportError::AmbiguousName(clip(&r.strategy)));
        }
    }
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ReportError::EmptyCompareList);
    }
    let mut picked_names = HashSet::new();
    let mut picked = Vec::with_capacity(names.len());
    for name in names {
        if !picked_names.insert(name) {
            return Err(ReportError::RepeatedName(clip(name)));
        }
        let r = results.iter().find(|r| r.strategy == name).ok_or_else(|| {
            ReportError::UnknownStrategy {
                name: clip(name),
                available: terminal_safe(
                    &results
                        .iter()
                        .map(|r| r.strategy.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    200,
                ),
            }
        })?;
        picked.push(r);
    }
    Ok(picked)
}

/// The results as a pretty-printed JSON document, `{"results": [...]}`; scores are fractions
/// and latencies milliseconds.
pub fn to_json(results: &[StrategyResult]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&ResultsFile {
        results: results.to_vec(),
    })
}

/// Reads a document [`to_json`] wrote.
pub fn from_json(json: &str) -> Result<Vec<StrategyResult>, serde_json::Error> {
    serde_json::from_str::<ResultsFile>(json).map(|f| f.results)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::latency_summary;

    fn result(strategy: &str, metrics: &[(&str, f64)], latency_ms: &[u64]) -> StrategyResult {
        StrategyResult {
            strategy: strategy.into(),
            dataset: "CIRR val".into(),
            queries: 4181,
            metrics: metrics.iter().map(|(n, v)| Metric::new(*n, *v)).collect(),
            latency: (!latency_ms.is_empty()).then(|| {
                let d: Vec<Duration> = latency_ms
                    .iter()
                    .map(|&m| Duration::from_millis(m))
                    .collect();
                latency_summary(&d).unwrap()
            }),
        }
    }

    #[test]
    fn table_rows_are_aligned_percentages_and_latencies() {
        let r = result(
            "dense",
            &[("Recall@1", 0.3312), ("Recall@10", 0.805)],
            &[10, 20, 30],
        );
        let text = render_table(&r);
        let expected = "\
dense on CIRR val (4181 queries)
metric          value
---------------------
Recall@1        33.12
Recall@10       80.50
latency p50  20.00 ms
latency p95  30.00 ms
latency p99  30.00 ms
Scores are percentages; latency percentiles are nearest-rank.
";
        assert_eq!(text, expected);
    }

    #[test]
    fn table_without_latency_has_no_latency_rows() {
        let r = result("dense", &[("mAP@5", 0.25)], &[]);
        let text = render_table(&r);
        assert!(text.contains("\nmAP@5   25.00\n"), "{text}");
        assert!(!text.contains("latency p50"), "{text}");
    }

    #[test]
    fn comparison_puts_strategies_side_by_side() {
        let a = result("dense", &[("Recall@1", 0.5), ("Recall@5", 0.75)], &[1, 2]);
        let b = result("lincir", &[("Recall@1", 0.25), ("mAP@5", 0.125)], &[]);
        let text = render_comparison(&[&a, &b]);
        let expected = "\
metric          dense    lincir
-------------------------------
dataset      CIRR val  CIRR val
queries          4181      4181
Recall@1        50.00     25.00
Recall@5        75.00         -
mAP@5               -     12.50
latency p50   1.00 ms         -
latency p95   2.00 ms         -
latency p99   2.00 ms         -
Scores are percentages; latency percentiles are nearest-rank.
";
        assert_eq!(text, expected);
    }

    #[test]
    fn hostile_names_cannot_reach_the_terminal() {
        let evil = "x\u{1b}[2J\u{1b}]0;pwned\u{7}\r\n\u{202E}gnp.exe\u{9b}31m\u{200B}";
        let mut a = result(evil, &[(evil, 0.5)], &[]);
        a.dataset = evil.repeat(100);
        for text in [render_table(&a), render_comparison(&[&a])] {
            for line in text.lines() {
                assert!(
                    !line.chars().any(is_unsafe_for_terminal),
                    "unsafe character in {line:?}"
                );
                assert!(line.chars().count() < 4 * MAX_CELL_CHARS, "{line:?}");
            }
            assert!(text.contains("\\u{1b}"), "{text}");
        }
    }

    #[test]
    fn terminal_safe_escapes_and_truncates() {
        assert_eq!(terminal_safe("plain", 10), "plain");
        assert_eq!(terminal_safe("a\u{1b}b", 20), "a\\u{1b}b");
        assert_eq!(terminal_safe("a\u{202e}b", 20), "a\\u{202e}b");
        assert_eq!(terminal_safe("café", 10), "café");
        assert_eq!(terminal_safe("abcdefghij", 5), "abcd…");
        assert_eq!(terminal_safe("abcde", 5), "abcde");
        assert_eq!(terminal_safe("abc", 0), "");
        // An escape is dropped whole rather than cut in half.
        assert_eq!(terminal_safe("ab\u{1b}cdefgh", 6), "ab…");
        assert!(terminal_safe(&"é".repeat(100), 7).chars().count() <= 7);
    }

    #[test]
    fn select_for_comparison_picks_in_order_and_rejects_bad_lists() {
        let results = vec![
            result("dense", &[], &[]),
            result("lincir", &[], &[]),
            result("tgdt", &[], &[]),
        ];
        let picked = select_for_comparison(&results, " tgdt, dense ").unwrap();
        let names: Vec<&str> = picked.iter().map(|r| r.strategy.as_str()).collect();
        assert_eq!(names, ["tgdt", "dense"]);
        assert_eq!(
            select_for_comparison(&results, " , "),
            Err(ReportError::EmptyCompareList)
        );
        assert_eq!(
            select_for_comparison(&results, "dense,dense"),
            Err(ReportError::RepeatedName("dense".into()))
        );
        let err = select_for_comparison(&results, "dense,clip").unwrap_err();
        assert_eq!(
            err,
            ReportError::UnknownStrategy {
                name: "clip".into(),
                available: "dense, lincir, tgdt".into()
            }
        );
        let twice = vec![result("dense", &[], &[]), result("dense", &[], &[])];
        assert_eq!(
            select_for_comparison(&twice, "dense"),
            Err(ReportError::AmbiguousName("dense".into()))
        );
    }

    #[test]
    fn json_round_trips() {
        let results = vec![
            result("dense", &[("Recall@1", 0.5)], &[1, 2, 3]),
            result("lincir", &[("mAP@5", 0.125)], &[]),
        ];
        let json = to_json(&results).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["results"][0]["metrics"][0]["value"], 0.5);
        assert_eq!(v["results"][0]["latency"]["p50_ms"], 2.0);
        assert!(v["results"][1].get("latency").is_none());
        assert_eq!(from_json(&json).unwrap(), results);
        assert!(from_json(r#"{"results": [{"strategy": "x"}]}"#).is_err());
    }
}
