//! The `csv` and `tsv` formats: a header row, then one JSON object per row.
//!
//! `csv` follows RFC 4180: fields may be wrapped in `"…"` (a doubled `""` is a quote, and a
//! quoted field may span lines). `tsv` is the IANA text/tab-separated-values type: fields split
//! on tabs, no quoting. Blank lines are skipped; a row with a different number of fields than
//! the header is an error naming its line.

use serde_json::{Map, Value};

/// Where and why a delimited output is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DelimitedError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One row and the line it started on.
struct Row {
    line: usize,
    fields: Vec<String>,
}

pub(crate) fn parse(raw: &str, delimiter: u8, quoting: bool) -> Result<Value, DelimitedError> {
    let rows = if quoting {
        split_quoted(raw, delimiter as char)?
    } else {
        split_plain(raw, delimiter as char)
    };
    let mut rows = rows.into_iter();
    let Some(header) = rows.next() else {
        return Err(DelimitedError {
            line: 0,
            column: 0,
            message: "the output is empty; expected a header row such as `name,version`".into(),
        });
    };
    for (i, name) in header.fields.iter().enumerate() {
        if name.is_empty() {
            return Err(DelimitedError {
                line: header.line,
                column: 0,
                message: format!("header column {} has no name", i + 1),
            });
        }
        if header.fields[..i].contains(name) {
            return Err(DelimitedError {
                line: header.line,
                column: 0,
                message: format!("header column `{name}` appears twice"),
            });
        }
    }
    let mut out = Vec::new();
    for row in rows {
        if row.fields.len() != header.fields.len() {
            let plural = |n: usize| if n == 1 { "field" } else { "fields" };
            return Err(DelimitedError {
                line: row.line,
                column: 0,
                message: format!(
                    "row has {} {}, the header (line {}) has {}",
                    row.fields.len(),
                    plural(row.fields.len()),
                    header.line,
                    header.fields.len()
                ),
            });
        }
        let object: Map<String, Value> = header
            .fields
            .iter()
            .cloned()
            .zip(row.fields.into_iter().map(Value::String))
            .collect();
        out.push(Value::Object(object));
    }
    Ok(Value::Array(out))
}

fn split_plain(raw: &str, delimiter: char) -> Vec<Row> {
    raw.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
        .map(|(line, l)| Row {
            line,
            fields: l.split(delimiter).map(str::to_string).collect(),
        })
        .collect()
}

fn split_quoted(raw: &str, delimiter: char) -> Result<Vec<Row>, DelimitedError> {
    let mut rows = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut column = 0;
    let mut row_line = 1;
    // Whether the current row has any content (so a blank line is not a row).
    let mut row_started = false;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        column += 1;
        match c {
            '"' if field.is_empty() => {
                row_started = true;
                let (open_line, open_col) = (line, column);
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            column += 2;
                            field.push('"');
                        }
                        Some('"') => {
                            column += 1;
                            break;
                        }
                        Some('\n') => {
                            line += 1;
                            column = 0;
                            field.push('\n');
                        }
                        Some(c) => {
                            column += 1;
                            field.push(c);
                        }
                        None => {
                            return Err(DelimitedError {
                                line: open_line,
                                column: open_col,
                                message: "unterminated `\"` quote".into(),
                            })
                        }
                    }
                }
                match chars.peek() {
                    None | Some('\n') | Some('\r') => {}
                    Some(&d) if d == delimiter => {}
                    Some(&other) => {
                        return Err(DelimitedError {
                            line,
                            column: column + 1,
                            message: format!(
                                "`{other}` after a closing quote; write `\"a\"\"b\"` for a quote inside a field"
                            ),
                        })
                    }
                }
            }
            c if c == delimiter => {
                row_started = true;
                fields.push(std::mem::take(&mut field));
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if row_started {
                    fields.push(std::mem::take(&mut field));
                    rows.push(Row {
                        line: row_line,
                        fields: std::mem::take(&mut fields),
                    });
                }
                row_started = false;
                line += 1;
                column = 0;
                row_line = line;
            }
            c => {
                row_started = true;
                field.push(c);
            }
        }
    }
    if row_started {
        fields.push(field);
        rows.push(Row {
            line: row_line,
            fields,
        });
    }
    Ok(rows)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc4180_cases() {
        let cases = [
            ("a,b\n1,2", json!([{"a": "1", "b": "2"}])),
            ("a,b\r\n1,2\r\n", json!([{"a": "1", "b": "2"}])),
            (
                "a,b\n\"x\"\"y\",\"multi\nline\"\n\n3,\n",
                json!([{"a": "x\"y", "b": "multi\nline"}, {"a": "3", "b": ""}]),
            ),
            ("a\n\"\"\n", json!([{"a": ""}])),
            ("a,b\n", json!([])),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input, b',', true).unwrap(), want, "{input:?}");
        }
    }

    #[test]
    fn row_lines_count_multiline_fields() {
        let e = parse("a,b\n\"1\n2\",3\nx\n", b',', true).unwrap_err();
        assert_eq!(e.line, 4, "{}", e.message);
    }

    #[test]
    fn header_errors() {
        for input in ["a,,b\n", "a,a\n", "\"a\"x,b\n"] {
            assert!(parse(input, b',', true).is_err(), "{input:?}");
        }
    }

    #[test]
    fn tsv_keeps_quotes() {
        let v = parse("a\tb\n\"x\"\t\n", b'\t', false).unwrap();
        assert_eq!(v, json!([{"a": "\"x\"", "b": ""}]));
    }
}
