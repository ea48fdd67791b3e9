//! A tolerant reader of Python literals (`repr()` of lists and dicts) for `pylist`/`pydict`.
//!
//! 2010 plugins written in Python printed `repr()` output: single-quoted strings, `u'…'`
//! prefixes, `True`/`False`/`None`, tuples, `2L` longs. This reads exactly those literals
//! into JSON; dict keys that are not strings become their text (`1` → `"1"`).

use serde_json::{Map, Number, Value};

/// Where and why a Python literal is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PyError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub(crate) fn parse(text: &str) -> Result<Value, PyError> {
    let mut p = Parser { text, pos: 0 };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos < text.len() {
        return Err(p.error("unexpected text after the value"));
    }
    Ok(value)
}

const MAX_DEPTH: usize = 128;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> PyError {
        let before = &self.text[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let found = self
            .rest()
            .chars()
            .next()
            .map_or("end of output".to_string(), |c| format!("`{c}`"));
        PyError {
            line,
            column,
            message: format!(
                "{message} (found {found}); expected a Python literal such as ['a', 1, None]"
            ),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, PyError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some('[') => {
                self.bump();
                Ok(Value::Array(self.items(']', depth)?.0))
            }
            Some('(') => {
                self.bump();
                let (mut items, trailing_comma) = self.items(')', depth)?;
                // `(x)` is just `x`; `(x,)` is a one-element tuple.
                if items.len() == 1 && !trailing_comma {
                    Ok(items.remove(0))
                } else {
                    Ok(Value::Array(items))
                }
            }
            Some('{') => {
                self.bump();
                self.dict(depth)
            }
            Some(c) if c == '\'' || c == '"' || self.string_prefix().is_some() => {
                Ok(Value::String(self.string()?))
            }
            Some(c) if c == '-' || c == '+' || c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => {
                let word: String = self
                    .rest()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let value = match word.as_str() {
                    "True" | "true" => Value::Bool(true),
                    "False" | "false" => Value::Bool(false),
                    "None" | "null" => Value::Null,
                    _ => return Err(self.error("unexpected name")),
                };
                self.pos += word.len();
                Ok(value)
            }
            _ => Err(self.error("unexpected character")),
        }
    }

    /// Comma-separated values up to `close`; also says whether a trailing comma was present.
    fn items(&mut self, close: char, depth: usize) -> Result<(Vec<Value>, bool), PyError> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_ws();
            if self.eat(close) {
                return Ok((items, trailing_comma));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            trailing_comma = self.eat(',');
            if !trailing_comma {
                self.skip_ws();
                if self.eat(close) {
                    return Ok((items, false));
                }
                return Err(self.error(&format!("expected `,` or `{close}`")));
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, PyError> {
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.eat('}') {
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                Value::Null => "None".to_string(),
                Value::Bool(true) => "True".to_string(),
                Value::Bool(false) => "False".to_string(),
                Value::Number(n) => n.to_string(),
                _ => return Err(self.error("dict key must be a string, number, bool or None")),
            };
            self.skip_ws();
            if !self.eat(':') {
                return Err(self.error("expected `:` after a dict key"));
            }
            self.skip_ws();
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            self.skip_ws();
            if !self.eat(',') {
                self.skip_ws();
                if self.eat('}') {
                    return Ok(Value::Object(map));
                }
                return Err(self.error("expected `,` or `}`"));
            }
        }
    }

    /// The length of a `u`/`b`/`r` prefix directly followed by a quote, if any.
    fn string_prefix(&self) -> Option<usize> {
        let rest = self.rest().as_bytes();
        let prefix = rest
            .iter()
            .take_while(|b| matches!(b, b'u' | b'U' | b'b' | b'B' | b'r' | b'R'))
            .count();
        (prefix > 0 && prefix <= 2 && matches!(rest.get(prefix), Some(b'\'' | b'"')))
            .then_some(prefix)
    }

    fn string(&mut self) -> Result<String, PyError> {
        let mut raw = false;
        if let Some(len) = self.string_prefix() {
            raw = self.rest()[..len].contains(['r', 'R']);
            self.pos += len;
        }
        let start = self.pos;
        let Some(quote) = self.bump() else {
            return Err(self.error("expected a string"));
        };
        let mut out = String::new();
        loop {
            match self.bump() {
                None | Some('\n') => {
                    self.pos = start;
                    return Err(self.error("unterminated string"));
                }
                Some(c) if c == quote => return Ok(out),
                Some('\\') if raw => {
                    out.push('\\');
                    if let Some(c) = self.bump() {
                        out.push(c);
                    }
                }
                Some('\\') => self.escape(&mut out)?,
                Some(c) => out.push(c),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), PyError> {
        let Some(c) = self.bump() else {
            return Err(self.error("unterminated string"));
        };
        match c {
            '\n' => {}
            '\\' | '\'' | '"' => out.push(c),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            '0' => out.push('\0'),
            'x' => out.push(self.hex(2)?),
            'u' => out.push(self.hex(4)?),
            'U' => out.push(self.hex(8)?),
            other => {
                out.push('\\');
                out.push(other);
            }
        }
        Ok(())
    }

    fn hex(&mut self, digits: usize) -> Result<char, PyError> {
        let text = self.rest().get(..digits).unwrap_or("");
        let code = u32::from_str_radix(text, 16)
            .ok()
            .filter(|_| text.len() == digits);
        match code.and_then(char::from_u32) {
            Some(c) => {
                self.pos += digits;
                Ok(c)
            }
            None => Err(self.error(&format!("bad escape: expected {digits} hex digits"))),
        }
    }

    fn number(&mut self) -> Result<Value, PyError> {
        let start = self.pos;
        let text: String = self
            .rest()
            .chars()
            .enumerate()
            .take_while(|(i, c)| {
                c.is_ascii_digit()
                    || matches!(c, '.' | 'e' | 'E' | '_')
                    || (matches!(c, '-' | '+') && *i == 0)
            })
            .map(|(_, c)| c)
            .collect();
        // `e-5`: a sign directly after the exponent marker.
        let mut text = text;
        while let Some(next) = self.text[start + text.len()..].chars().next() {
            if matches!(next, '-' | '+') && text.ends_with(['e', 'E']) {
                text.push(next);
                let more: String = self.text[start + text.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                text.push_str(&more);
            } else {
                break;
            }
        }
        self.pos = start + text.len();
        if matches!(self.peek(), Some('L' | 'l')) {
            self.bump();
        }
        let clean = text.replace('_', "");
        let clean = clean.strip_prefix('+').unwrap_or(&clean);
        if let Ok(i) = clean.parse::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = clean.parse::<u64>() {
            return Ok(Value::from(u));
        }
        match clean.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Ok(Value::Number(n)),
            None => {
                self.pos = start;
                Err(self.error("bad number"))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_reprs() {
        let cases = [
            (
                "['a', u'b', b\"c\", None, True, False]",
                json!(["a", "b", "c", null, true, false]),
            ),
            (
                "{'k': 2L, 1: 'one', None: (1,), 'f': -1.5e-3}",
                json!({"k": 2, "1": "one", "None": [1], "f": -0.0015}),
            ),
            ("(1)", json!(1)),
            ("(1, 2,)", json!([1, 2])),
            (
                "['it\\'s', 'tab\\there', '\\x41\\u00e9', r'\\d']",
                json!(["it's", "tab\there", "Aé", "\\d"]),
            ),
            ("  [ ]  ", json!([])),
            ("{}", json!({})),
            ("[18446744073709551615]", json!([18446744073709551615u64])),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn errors_have_positions() {
        let cases = [
            ("[1, 2", 1, 6),
            ("{'a' 1}", 1, 6),
            ("[\n  foo]", 2, 3),
            ("['abc", 1, 2),
            ("[1] x", 1, 5),
            ("[1e400]", 1, 2),
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
    fn deep_nesting_is_refused() {
        let input = "[".repeat(1000);
        assert!(parse(&input).unwrap_err().message.contains("nested"));
    }
}
