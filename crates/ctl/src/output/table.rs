//! The text layout every command uses: aligned columns under an upper-case
//! header ([`Table`]), `key: value` lines ([`fields`]), and how an optional
//! value reads in a cell.

use crate::duration::Millis;

/// Aligned columns under an upper-case header row, kubectl style: three
/// spaces between columns, no trailing whitespace, `-` for an empty cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let cell = |s: &str| -> String {
            if s.is_empty() {
                return "-".into();
            }
            // Text from the server must not break the alignment.
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let rows: Vec<Vec<String>> = std::iter::once(
            self.headers
                .iter()
                .map(|h| h.to_uppercase())
                .collect::<Vec<_>>(),
        )
        .chain(
            self.rows
                .iter()
                .map(|r| r.iter().map(|c| cell(c)).collect()),
        )
        .collect();
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                rows.iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(c);
                let pad = widths[i] - c.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key:   value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

pub(super) fn ms(v: Option<u32>) -> String {
    v.map(|v| Millis(v).to_string()).unwrap_or_default()
}

pub(super) fn num<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub(super) fn percent(v: Option<u32>) -> String {
    v.map(|v| format!("{v}%")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let mut t = Table::new(&["name", "policy", "detail"]);
        t.row(vec!["shop".into(), "round_robin".into(), String::new()]);
        t.row(vec![
            "a-much-longer-name".into(),
            "ip_hash".into(),
            "two\nlines".into(),
        ]);
        assert_eq!(
            t.render(),
            "\
NAME                 POLICY        DETAIL
shop                 round_robin   -
a-much-longer-name   ip_hash       two lines
"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let mut t = Table::new(&["zone", "x"]);
        t.row(vec!["zürich".into(), "1".into()]);
        t.row(vec!["a".into(), "2".into()]);
        assert_eq!(t.render(), "ZONE     X\nzürich   1\na        2\n");
    }
}
