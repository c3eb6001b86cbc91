//! Plain-text tables for listings: a header row, and columns as wide as their widest cell.
//! Cells are not cut here: a caller shortens what may be shortened ([`ellipsize`]) and leaves
//! whole what must not be cut (an address).

use std::io::{self, Write};

pub struct Table {
    header: Vec<&'static str>,
    /// Numbers and sizes are aligned right.
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns by name; a name ending in `>` is aligned right (the `>` is not shown).
    pub fn new(columns: &[&'static str]) -> Self {
        Self {
            header: columns.iter().map(|c| c.trim_end_matches('>')).collect(),
            right: columns.iter().map(|c| c.ends_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and the rows, each line indented by `indent` spaces; the last column is not
    /// padded.
    pub fn write(&self, out: &mut impl Write, indent: usize) -> io::Result<()> {
        let width = |s: &str| s.chars().count();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| self.rows.iter().map(|r| width(&r[i])).chain([width(self.header[i])]).max().unwrap_or(0))
            .collect();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = " ".repeat(indent);
            for (i, cell) in cells.iter().enumerate() {
                let last = i + 1 == cells.len();
                let pad = widths[i].saturating_sub(width(cell));
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    line.push_str("  ");
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// At most `max` characters, the last of them `…` when something was cut; cut after a whole word
/// when one ends in the second half.
pub fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let keep = max.saturating_sub(1);
    let mut cut: String = s.chars().take(keep).collect();
    let next_is_space = s.chars().nth(keep).is_some_and(char::is_whitespace);
    if !next_is_space
        && let Some(space) = cut.rfind(char::is_whitespace)
        && cut[..space].chars().count() * 2 >= keep
    {
        cut.truncate(space);
    }
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// A sender for a list: the display name, shortened to `max` characters if needed, or the
/// address, whole (half an address is worse than a wide column).
pub fn sender(from: &str, max: usize) -> String {
    let shown = pillarbox_mailbox::sender_name(from);
    if shown.contains('@') && !shown.contains(' ') { shown } else { ellipsize(&shown, max) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(&["NAME", "SIZE>", "NOTE"]);
        t.row(vec!["ann".into(), "12 kB".into(), "x".into()]);
        t.row(vec!["Jürgen Müller".into(), "1.5 MB".into(), String::new()]);
        let mut out = Vec::new();
        t.write(&mut out, 2).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "  NAME             SIZE  NOTE\n  ann             12 kB  x\n  Jürgen Müller  1.5 MB\n"
        );
    }

    #[test]
    fn names_are_shortened_and_addresses_kept_whole() {
        assert_eq!(ellipsize("Quarterly figures for the board", 12), "Quarterly…");
        assert_eq!(ellipsize("short", 12), "short");
        assert_eq!(sender("A Very Long Display Name Indeed <a@example.org>", 10), "A Very…");
        let long = "someone.with.a.long.name@subdomain.example.org";
        assert_eq!(sender(long, 10), long);
        assert_eq!(sender(&format!("<{long}>"), 10), long);
    }
}
