//! Intuit's query language, the subset QBO documents: `SELECT * | COUNT(*) | fields FROM Entity
//! [WHERE cond AND cond ...] [ORDERBY field [ASC|DESC], ...] [STARTPOSITION n] [MAXRESULTS n]`,
//! conditions `field = | < | > | <= | >= | != value`, `field IN (v, ...)`, `field LIKE 'a%'`.
//! Keywords are case-insensitive; strings are single-quoted with `\'` for a quote; fields may
//! be dotted (`MetaData.LastUpdatedTime`). No OR, no parentheses, no joins: QBO has none.

use serde_json::Value;

/// QBO caps a page at this many rows.
pub const MAX_RESULTS_MAX: u64 = 1000;
/// A page when the query does not say.
pub const MAX_RESULTS_DEFAULT: u64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    All,
    Count,
    Fields(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    In,
    Like,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub field: String,
    pub op: Op,
    pub values: Vec<Literal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Select,
    pub entity: String,
    pub conds: Vec<Cond>,
    pub order: Vec<(String, bool)>,
    /// 1-based, as QBO counts.
    pub start: u64,
    pub max: u64,
}

/// A query QBO would refuse: the text goes into `Detail` after `QueryParserError: `.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Text(String),
    Num(f64),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' {
            let mut text = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(ParseError(format!(
                            "Lexical error at line 1, column {}.  Encountered: <EOF> after : \"'{text}\"",
                            b.len() + 1
                        )));
                    }
                    Some('\\') if b.get(i + 1) == Some(&'\'') => {
                        text.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        text.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Text(text), col));
        } else if c.is_ascii_digit() || (c == '-' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == '.') {
                i += 1;
            }
            let text: String = b[start..i].iter().collect();
            let n = text.parse().map_err(|_| {
                ParseError(format!("Encountered \"{text}\" at line 1, column {col}."))
            })?;
            out.push((Tok::Num(n), col));
        } else if c.is_alphanumeric() || c == '_' || c == '*' {
            let start = i;
            while i < b.len()
                && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.' || b[i] == '*')
            {
                i += 1;
            }
            out.push((Tok::Word(b[start..i].iter().collect()), col));
        } else {
            let two: String = b[i..(i + 2).min(b.len())].iter().collect();
            let sym = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "!=" => Some("!="),
                "<>" => Some("!="),
                _ => None,
            };
            if let Some(s) = sym {
                out.push((Tok::Sym(s), col));
                i += 2;
                continue;
            }
            let sym = match c {
                '=' => "=",
                '<' => "<",
                '>' => ">",
                '(' => "(",
                ')' => ")",
                ',' => ",",
                _ => {
                    return Err(ParseError(format!(
                        "Lexical error at line 1, column {col}.  Encountered: \"{c}\""
                    )));
                }
            };
            out.push((Tok::Sym(sym), col));
            i += 1;
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end_col: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    /// QBO's parser error, in its words.
    fn unexpected(&self, expecting: &str) -> ParseError {
        let (shown, col) = match self.toks.get(self.pos) {
            Some((Tok::Word(w), c)) => (w.clone(), *c),
            Some((Tok::Text(t), c)) => (format!("'{t}'"), *c),
            Some((Tok::Num(n), c)) => (n.to_string(), *c),
            Some((Tok::Sym(s), c)) => (s.to_string(), *c),
            None => ("<EOF>".into(), self.end_col),
        };
        ParseError(format!(
            "Encountered \" \"{shown}\" \"{} \"\" at line 1, column {col}.\nWas expecting:\n    {expecting} ...\n    ",
            shown.to_uppercase()
        ))
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Tok::Word(w)) = self.peek()
            && w.eq_ignore_ascii_case(kw)
        {
            self.pos += 1;
            return true;
        }
        false
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("\"{kw}\"")))
        }
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Word(w))
                if ![
                    "where",
                    "and",
                    "orderby",
                    "startposition",
                    "maxresults",
                    "null",
                ]
                .contains(&w.to_lowercase().as_str()) =>
            {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.unexpected("<IDENTIFIER>")),
        }
    }

    fn sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        let lit = match self.peek() {
            Some(Tok::Text(t)) => Literal::Text(t.clone()),
            Some(Tok::Num(n)) => Literal::Number(*n),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return Err(self.unexpected("<STRING_LITERAL>")),
        };
        self.pos += 1;
        Ok(lit)
    }

    fn number(&mut self) -> Result<u64, ParseError> {
        match self.peek() {
            Some(Tok::Num(n)) if *n >= 0.0 && n.fract() == 0.0 => {
                let n = *n as u64;
                self.pos += 1;
                Ok(n)
            }
            _ => Err(self.unexpected("<INTEGER>")),
        }
    }
}

pub fn parse(text: &str) -> Result<Query, ParseError> {
    let toks = lex(text)?;
    let mut p = Parser {
        end_col: text.chars().count() + 1,
        toks,
        pos: 0,
    };
    p.expect_keyword("select")?;
    let select = if p.keyword("*") {
        // `SELECT *, Sku FROM Item`: QBO takes named fields after `*` (python-quickbooks
        // 0.9.12 sends exactly this from `Item.all()`, routablehq/python-quickbooks#379,
        // tested against QBO); `*` already returns them all.
        while p.sym(",") {
            p.ident()?;
        }
        Select::All
    } else if matches!(p.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("count")) {
        p.pos += 1;
        if !(p.sym("(") && p.keyword("*") && p.sym(")")) {
            return Err(p.unexpected("\"(*)\""));
        }
        Select::Count
    } else {
        let mut fields = vec![p.ident()?];
        while p.sym(",") {
            fields.push(p.ident()?);
        }
        Select::Fields(fields)
    };
    p.expect_keyword("from")?;
    let entity = p.ident()?;
    let mut conds = Vec::new();
    if p.keyword("where") {
        loop {
            let field = p.ident()?;
            let (op, values) = if p.keyword("in") {
                if !p.sym("(") {
                    return Err(p.unexpected("\"(\""));
                }
                let mut vs = vec![p.literal()?];
                while p.sym(",") {
                    vs.push(p.literal()?);
                }
                if !p.sym(")") {
                    return Err(p.unexpected("\")\""));
                }
                (Op::In, vs)
            } else if p.keyword("like") {
                (Op::Like, vec![p.literal()?])
            } else {
                let op = match p.peek() {
                    Some(Tok::Sym("=")) => Op::Eq,
                    Some(Tok::Sym("!=")) => Op::Ne,
                    Some(Tok::Sym("<")) => Op::Lt,
                    Some(Tok::Sym(">")) => Op::Gt,
                    Some(Tok::Sym("<=")) => Op::Le,
                    Some(Tok::Sym(">=")) => Op::Ge,
                    _ => return Err(p.unexpected("\"=\"")),
                };
                p.pos += 1;
                (op, vec![p.literal()?])
            };
            conds.push(Cond { field, op, values });
            if !p.keyword("and") {
                break;
            }
        }
    }
    let mut order = Vec::new();
    let (mut start, mut max) = (1, MAX_RESULTS_DEFAULT);
    loop {
        if p.keyword("orderby") || (p.keyword("order") && p.keyword("by")) {
            loop {
                let f = p.ident()?;
                let desc = if p.keyword("desc") {
                    true
                } else {
                    p.keyword("asc");
                    false
                };
                order.push((f, desc));
                if !p.sym(",") {
                    break;
                }
            }
        } else if p.keyword("startposition") {
            start = p.number()?.max(1);
        } else if p.keyword("maxresults") {
            max = p.number()?.min(MAX_RESULTS_MAX);
        } else {
            break;
        }
    }
    if p.peek().is_some() {
        return Err(p.unexpected("<EOF>"));
    }
    Ok(Query {
        select,
        entity,
        conds,
        order,
        start,
        max,
    })
}

/// A field of an entity, by dotted path, matched case-insensitively as QBO does.
pub fn field<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path.split('.') {
        let map = cur.as_object()?;
        cur = map.get(part).or_else(|| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(part))
                .map(|(_, v)| v)
        })?;
        // A reference compares by its value: `CustomerRef = '5'`.
        if let Some(v) = cur.get("value").filter(|_| cur.is_object()) {
            cur = v;
        }
    }
    Some(cur)
}

fn compare(v: &Value, lit: &Literal) -> Option<std::cmp::Ordering> {
    match (v, lit) {
        (Value::String(s), Literal::Text(t)) => {
            // Ids and numbers stored as text compare as numbers when both are numbers.
            match (s.parse::<f64>(), t.parse::<f64>()) {
                (Ok(a), Ok(b)) => a.partial_cmp(&b),
                _ => Some(s.to_lowercase().cmp(&t.to_lowercase())),
            }
        }
        (Value::Number(n), Literal::Number(b)) => n.as_f64()?.partial_cmp(b),
        (Value::Number(n), Literal::Text(t)) => n.as_f64()?.partial_cmp(&t.parse().ok()?),
        (Value::String(s), Literal::Number(b)) => s.parse::<f64>().ok()?.partial_cmp(b),
        (Value::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Literal::Text(t)) => Some(a.to_string().cmp(&t.to_lowercase())),
        _ => None,
    }
}

fn like(s: &str, pattern: &str) -> bool {
    let (s, p) = (s.to_lowercase(), pattern.to_lowercase());
    let parts: Vec<&str> = p.split('%').collect();
    if parts.len() == 1 {
        return s == p;
    }
    let mut rest = s.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(at) = rest.find(part) {
            rest = &rest[at + part.len()..];
        } else {
            return false;
        }
    }
    true
}

impl Cond {
    pub fn matches(&self, obj: &Value) -> bool {
        let Some(v) = field(obj, &self.field) else {
            // `Active` is absent on transactions; treat a missing field as no match.
            return false;
        };
        use std::cmp::Ordering::*;
        match self.op {
            Op::In => self.values.iter().any(|l| compare(v, l) == Some(Equal)),
            Op::Like => match (v, self.values.first()) {
                (Value::String(s), Some(Literal::Text(p))) => like(s, p),
                _ => false,
            },
            _ => {
                let Some(ord) = self.values.first().and_then(|l| compare(v, l)) else {
                    return false;
                };
                match self.op {
                    Op::Eq => ord == Equal,
                    Op::Ne => ord != Equal,
                    Op::Lt => ord == Less,
                    Op::Gt => ord == Greater,
                    Op::Le => ord != Greater,
                    Op::Ge => ord != Less,
                    Op::In | Op::Like => unreachable!(),
                }
            }
        }
    }
}

/// A total order on field values: missing and null first, then booleans, numbers (numeric
/// text counts as a number), then text. Text sorts by its bytes, upper case before lower, as
/// QBO's lists do (`PG&E` before `Pam Seitz` in `vendor-query-active-in-true-false`), though
/// WHERE compares text case-insensitively. Total, so sorting never panics.
fn rank(v: &Value) -> (u8, f64, String) {
    match v {
        Value::Null => (0, 0.0, String::new()),
        Value::Bool(b) => (1, f64::from(u8::from(*b)), String::new()),
        Value::Number(n) => (2, n.as_f64().unwrap_or(0.0), String::new()),
        Value::String(s) => match s.parse::<f64>() {
            Ok(x) if x.is_finite() => (2, x, String::new()),
            _ => (3, 0.0, s.clone()),
        },
        other => (4, 0.0, other.to_string()),
    }
}

fn order_of(a: &Value, b: &Value) -> std::cmp::Ordering {
    let (x, y) = (rank(a), rank(b));
    x.0.cmp(&y.0)
        .then_with(|| x.1.total_cmp(&y.1))
        .then_with(|| x.2.cmp(&y.2))
}

/// Orders rows by the query's ORDERBY (then by Id, as QBO's default).
pub fn sort(rows: &mut [Value], order: &[(String, bool)]) {
    let key = |v: &Value, f: &str| field(v, f).cloned().unwrap_or(Value::Null);
    rows.sort_by(|a, b| {
        for (f, desc) in order {
            let ord = order_of(&key(a, f), &key(b, f));
            let ord = if *desc { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        order_of(&key(a, "Id"), &key(b, "Id"))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_qbo_clients_send() {
        let q =
            parse("SELECT * FROM Customer WHERE DisplayName = 'Amy\\'s Bird Sanctuary'").unwrap();
        assert_eq!(q.entity, "Customer");
        assert_eq!(
            q.conds[0].values,
            vec![Literal::Text("Amy's Bird Sanctuary".into())]
        );
        let q = parse(
            "select * from Customer where Id IN ('5', '6') AND Active IN ( true, false ) MAXRESULTS 2 STARTPOSITION 3",
        )
        .unwrap();
        assert_eq!((q.start, q.max), (3, 2));
        assert_eq!(q.conds.len(), 2);
        let q = parse("SELECT *, Sku FROM Item MAXRESULTS 100").unwrap();
        assert_eq!((q.select, q.max), (Select::All, 100));
        let q = parse("SELECT count(*) FROM Item ORDERBY Name DESC").unwrap();
        assert_eq!(q.select, Select::Count);
        assert_eq!(q.order, vec![("Name".into(), true)]);
        assert_eq!(
            parse("select * from Item maxresults 5000").unwrap().max,
            1000
        );
    }

    #[test]
    fn refuses_what_qbo_refuses() {
        let e = parse("select * from null").unwrap_err();
        assert!(e.0.contains("column 15"), "{e}");
        assert!(e.0.contains("<IDENTIFIER>"), "{e}");
        assert!(parse("select * from Item where Name = ").is_err());
        assert!(parse("select * from Item where Name = 'open").is_err());
        assert!(parse("delete from Item").is_err());
    }

    #[test]
    fn evaluates_conditions() {
        let c = json!({"Id": "10", "DisplayName": "Amy's Bird", "Active": true, "Balance": 12.5,
            "CustomerRef": {"value": "5"}, "MetaData": {"LastUpdatedTime": "2020-09-29T05:58:16-07:00"}});
        let q = |s: &str| parse(s).unwrap().conds[0].matches(&c);
        assert!(q("select * from X where Id > '9'"));
        assert!(q("select * from X where DisplayName LIKE 'amy%'"));
        assert!(q("select * from X where Active IN (true, false)"));
        assert!(q("select * from X where Balance >= 12.5"));
        assert!(q("select * from X where CustomerRef = '5'"));
        assert!(q(
            "select * from X where MetaData.LastUpdatedTime > '2020-01-01'"
        ));
        assert!(!q("select * from X where DisplayName = 'Bob'"));
    }
}
