//! The progression's tables, in Markdown (they read as well in a terminal).

use std::fmt::Write as _;
use std::time::Duration;

use super::load::Tally;
use super::stages::StageResult;

fn pct(t: &Tally) -> String {
    format!("{:.2} %", t.availability())
}

fn ms(d: Duration) -> String {
    if d.is_zero() {
        "–".into()
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn served_by(t: &Tally) -> String {
    let parts: Vec<String> = t
        .served_by
        .iter()
        .map(|(who, n)| format!("{who} {n}"))
        .collect();
    if parts.is_empty() {
        "nobody".into()
    } else {
        parts.join(", ")
    }
}

fn failures(t: &Tally) -> String {
    let parts: Vec<String> = t
        .failures
        .iter()
        .map(|(kind, (n, slowest))| format!("{n} × {kind} (≤ {})", ms(*slowest)))
        .collect();
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(", ")
    }
}

/// The summary: one row per stage.
pub fn summary(results: &[StageResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| stage | topology | requests | failed | availability | orders placed / recorded | lost | duplicated | stock matches orders |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        let t = r.load.total();
        let unconfirmed = r.unconfirmed();
        let recorded = if unconfirmed > 0 {
            format!(
                "{} / {} ({unconfirmed} committed, answer lost)",
                r.load.placed.len(),
                r.recorded.len()
            )
        } else {
            format!("{} / {}", r.load.placed.len(), r.recorded.len())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.topology,
            t.requests,
            t.failed,
            pct(&t),
            recorded,
            r.lost().len(),
            r.duplicated(),
            if r.stock_consistent { "yes" } else { "NO" },
        );
    }
    out
}

/// The detail: one row per phase of each stage.
pub fn phases(results: &[StageResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| stage | phase | requests | failed | availability | failed reads | longest without a write | checkouts retried: replayed / placed | answered by | failures | slowest failure |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|");
    for r in results {
        for (label, t) in r.phases.iter().zip(&r.load.phases) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                r.name,
                label,
                t.requests,
                t.failed,
                pct(t),
                t.reads_failed,
                secs(t.longest_without_writes),
                t.reconciled,
                t.placed_on_retry,
                served_by(t),
                failures(t),
                ms(t.slowest_failure),
            );
        }
    }
    out
}

/// The failed requests noted in detail, by stage and phase.
pub fn notes(results: &[StageResult]) -> String {
    let mut out = String::new();
    for r in results {
        for (label, t) in r.phases.iter().zip(&r.load.phases) {
            for n in &t.notes {
                let _ = writeln!(out, "  stage {} / {label}: {n}", r.name);
            }
        }
    }
    out
}
