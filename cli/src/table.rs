//! Plain-text tables that fit the terminal: columns as wide as their widest cell, the last
//! column cut (with `…`) so that no line is wider than the terminal.

/// The terminal's width: `COLUMNS` when it is a number of at least 40, else 100.
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w| *w >= 40)
        .unwrap_or(100)
}

/// `rows` under `header`, two spaces between columns, no line longer than `width` characters.
pub fn render(header: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i + 1 < columns {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(&fit(line.trim_end(), width));
        out.push('\n');
    }
    out
}

/// `line` cut to `width` characters, ending in `…` when cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_no_line_is_wider_than_the_terminal() {
        let rows = vec![
            vec![
                "pg".to_string(),
                "healthy".into(),
                "a long reason ".repeat(10),
            ],
            vec![
                "mysql-cluster".to_string(),
                "degraded".into(),
                "short".into(),
            ],
        ];
        let text = render(&["CLUSTER", "HEALTH", "WHY"], &rows, 60);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "CLUSTER        HEALTH    WHY");
        assert_eq!(lines[2], "mysql-cluster  degraded  short");
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{text}");
        assert!(lines[1].ends_with('…'));
    }
}
