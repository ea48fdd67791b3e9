//! The `kv` format: `KEY=VALUE` lines quoted as os-release(5) says, into one JSON object.
//!
//! Blank lines and `#` comments are skipped. A value may mix unquoted text, `'…'` (literal)
//! and `"…"` (where `\"`, `\\`, `\$` and `` \` `` are escapes and any other backslash is kept),
//! like the shell. An unquoted backslash escapes the next character. Unquoted spaces are an
//! error: os-release(5) requires quoting them. A repeated key keeps its last value, as the
//! shell would.

use serde_json::{Map, Value};

/// Where and why a `kv` output is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub(crate) fn parse(raw: &str) -> Result<Value, KvError> {
    let mut out = Map::new();
    for (index, text) in raw.lines().enumerate() {
        let line = index + 1;
        let text = text.strip_suffix('\r').unwrap_or(text);
        let trimmed = text.trim_start();
        let indent = text.len() - trimmed.len();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(KvError {
                line,
                column: indent + 1,
                message: format!(
                    "`{}` is not KEY=VALUE; e.g. `ID=debian`",
                    trimmed.trim_end()
                ),
            });
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(KvError {
                line,
                column: indent + 1,
                message: format!("`{key}` is not a valid key; e.g. `VERSION_ID=\"12\"`"),
            });
        }
        let value_col = indent + key.len() + 2;
        let value = unquote(value.trim_end(), line, value_col)?;
        out.insert(key.to_string(), Value::String(value));
    }
    Ok(Value::Object(out))
}

fn unquote(value: &str, line: usize, start_col: usize) -> Result<String, KvError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.char_indices().peekable();
    let err = |offset: usize, message: String| KvError {
        line,
        column: start_col + value[..offset].chars().count(),
        message,
    };
    while let Some((at, c)) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, c)) => out.push(c),
                    None => return Err(err(at, "unterminated `'` quote".into())),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.peek() {
                        Some(&(_, e @ ('"' | '\\' | '$' | '`'))) => {
                            out.push(e);
                            chars.next();
                        }
                        _ => out.push('\\'),
                    },
                    Some((_, c)) => out.push(c),
                    None => return Err(err(at, "unterminated `\"` quote".into())),
                }
            },
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => return Err(err(at, "a trailing `\\` escapes nothing".into())),
            },
            c if c.is_whitespace() => {
                return Err(err(
                    at,
                    "unquoted space in the value; quote it: `PRETTY_NAME=\"Debian GNU/Linux 12\"`"
                        .into(),
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        let cases = [
            (r#"A="x \"y\" \$z \`w\` \\ \n""#, r#"x "y" $z `w` \ \n"#),
            (r#"A='it''s'"#, "its"),
            (r#"A='\n $x'"#, r"\n $x"),
            (r#"A=pre"mid"'post'"#, "premidpost"),
            (r"A=a\ b", "a b"),
            ("A=", ""),
            ("  A=1:2.3~rc1+dfsg  ", "1:2.3~rc1+dfsg"),
            ("A=1\r", "1"),
        ];
        for (input, want) in cases {
            let v = parse(input).unwrap();
            assert_eq!(v["A"], want, "{input}");
        }
    }

    #[test]
    fn errors_have_positions() {
        let cases = [
            ("A=1\nB=x y\n", 2, 4),
            ("A='x\n", 1, 3),
            ("\n  oops\n", 2, 3),
            ("A=x\\", 1, 4),
            (" =1", 1, 2),
        ];
        for (input, line, column) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(
                (e.line, e.column),
                (line, column),
                "{input:?}: {}",
                e.message
            );
        }
    }

    #[test]
    fn last_key_wins() {
        let v = parse("A=1\nA=2\n").unwrap();
        assert_eq!(v["A"], "2");
    }
}
