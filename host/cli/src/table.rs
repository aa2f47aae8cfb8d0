//! Plain-text tables for `list`, `inspect`, `status` and `events`, and their cells.

use std::io::Write;

/// Prints `rows` (the first one the header) with columns padded to their widest cell.
pub(crate) fn print<const N: usize>(rows: &[[String; N]]) {
    let widths = widths(rows);
    for row in rows {
        print_row(row, &widths);
    }
}

/// The width of each column of `rows`: its widest cell.
pub(crate) fn widths<const N: usize>(rows: &[[String; N]]) -> [usize; N] {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

/// Prints one row with its columns padded to `widths`.
pub(crate) fn print_row<const N: usize>(row: &[String; N], widths: &[usize; N]) {
    let mut line = String::new();
    for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
        if i + 1 == N {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<w$}  "));
        }
    }
    let _ = writeln!(std::io::stdout().lock(), "{}", line.trim_end());
}

/// The file name alone, for a table cell.
pub(crate) fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// `value[key]` of an API answer for a cell: a string as it is, anything else as JSON, `-` if
/// missing.
pub(crate) fn cell(value: &serde_json::Value, key: &str) -> String {
    match value.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// A duration in microseconds, in the unit that reads best: `850µs`, `1.2ms`, `3.40s`.
pub(crate) fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}
