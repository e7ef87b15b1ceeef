//! Column-aligned text tables, as kubectl prints them.

/// Renders rows under headers, columns padded to their widest cell and separated by three spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("   ").trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n") + "\n"
}

/// A duration in seconds as kubectl's AGE column shows it (`45s`, `3m12s`, `5h4m`, `2d3h`).
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_their_headers() {
        let out =
            render(&["IP", "NODE"], &[vec!["198.19.0.10".into(), "node-1".into()], vec!["1.2.3.4".into(), "n".into()]]);
        assert_eq!(out, "IP            NODE\n198.19.0.10   node-1\n1.2.3.4       n\n");
    }

    #[test]
    fn ages_read_like_kubectls() {
        assert_eq!(age(-5), "0s", "clock skew never shows a negative age");
        assert_eq!(age(59), "59s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(5 * 3600 + 4 * 60 + 9), "5h4m");
        assert_eq!(age(2 * 86400 + 3 * 3600), "2d3h");
    }
}
