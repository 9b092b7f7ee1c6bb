//! A small JSON writer (no dependency): objects, arrays, and strings escaped per RFC 8259.
//! Ids and error texts come from the DB and the kernel, so every string is escaped,
//! control characters included.

use std::fmt::Write;

pub struct Json {
    out: String,
    /// Per open container: has it an element yet (so the next one needs a comma)?
    stack: Vec<bool>,
    /// A key was just written: its value follows without a separator.
    after_key: bool,
    pretty: bool,
}

impl Json {
    pub fn new(pretty: bool) -> Json {
        Json {
            out: String::new(),
            stack: Vec::new(),
            after_key: false,
            pretty,
        }
    }

    pub fn finish(mut self) -> String {
        self.out.push('\n');
        self.out
    }

    fn newline(&mut self) {
        if self.pretty {
            self.out.push('\n');
            self.out.push_str(&"  ".repeat(self.stack.len()));
        }
    }

    fn before_value(&mut self) {
        if std::mem::take(&mut self.after_key) {
            return;
        }
        if let Some(has) = self.stack.last_mut() {
            if *has {
                self.out.push(',');
            }
            *has = true;
            self.newline();
        }
    }

    pub fn key(&mut self, k: &str) -> &mut Self {
        self.before_value();
        escape(&mut self.out, k);
        self.out.push_str(if self.pretty { ": " } else { ":" });
        self.after_key = true;
        self
    }

    pub fn begin_obj(&mut self) -> &mut Self {
        self.before_value();
        self.out.push('{');
        self.stack.push(false);
        self
    }

    pub fn begin_arr(&mut self) -> &mut Self {
        self.before_value();
        self.out.push('[');
        self.stack.push(false);
        self
    }

    pub fn end_obj(&mut self) -> &mut Self {
        self.close('}')
    }

    pub fn end_arr(&mut self) -> &mut Self {
        self.close(']')
    }

    fn close(&mut self, c: char) -> &mut Self {
        if self.stack.pop() == Some(true) {
            self.newline();
        }
        self.out.push(c);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.before_value();
        escape(&mut self.out, s);
        self
    }

    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    pub fn num(&mut self, n: impl Number) -> &mut Self {
        self.before_value();
        n.write(&mut self.out);
        self
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.before_value();
        self.out.push_str(if b { "true" } else { "false" });
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.before_value();
        self.out.push_str("null");
        self
    }

    pub fn str_arr<'s>(&mut self, items: impl IntoIterator<Item = &'s str>) -> &mut Self {
        self.begin_arr();
        for s in items {
            self.str(s);
        }
        self.end_arr()
    }
}

/// `s` as a JSON string literal.
pub fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What a JSON number may be made of: integers, and finite floats (NaN and the
/// infinities have no JSON form and are written as null).
pub trait Number {
    fn write(&self, out: &mut String);
}

macro_rules! integer_number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn write(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_number!(u8, u16, u32, u64, usize, i32, i64);

impl Number for f64 {
    fn write(&self, out: &mut String) {
        if self.is_finite() {
            let _ = write!(out, "{self}");
        } else {
            out.push_str("null");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_finite_or_null() {
        let mut j = Json::new(false);
        j.begin_arr()
            .num(1.5)
            .num(f64::NAN)
            .num(f64::INFINITY)
            .num(7usize)
            .num(-2i64)
            .end_arr();
        assert_eq!(j.finish(), "[1.5,null,null,7,-2]\n");
    }

    #[test]
    fn nested_documents() {
        let mut j = Json::new(false);
        j.begin_obj();
        j.key("a").num(1);
        j.key("b").begin_arr().str("x").null().bool(true).end_arr();
        j.key("c").begin_obj().end_obj();
        j.key("d").begin_arr().end_arr();
        j.key("e")
            .begin_arr()
            .begin_obj()
            .key("k")
            .opt_str(None)
            .end_obj()
            .end_arr();
        j.end_obj();
        assert_eq!(
            j.finish(),
            "{\"a\":1,\"b\":[\"x\",null,true],\"c\":{},\"d\":[],\"e\":[{\"k\":null}]}\n"
        );
    }

    #[test]
    fn pretty_documents() {
        let mut j = Json::new(true);
        j.begin_obj()
            .key("a")
            .begin_arr()
            .num(1)
            .num(2)
            .end_arr()
            .key("b")
            .str("c")
            .end_obj();
        assert_eq!(
            j.finish(),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"c\"\n}\n"
        );
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let mut s = String::new();
        escape(&mut s, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001e\\u007fé\"");
    }
}
