//! Constrained decoding to JSON: the answer is always a JSON value, and with a schema a value
//! of that schema's subset (types, properties, required, enum/const, items, nesting, anyOf of
//! distinct types, local `$ref`s).
//!
//! A byte-level pushdown recognizer ([`Recognizer`]) follows the text written so far. Which
//! tokens may come next is decided on the tokenizer's real vocabulary: every token's bytes go
//! into a trie once per tokenizer ([`VocabIndex`]), and the allowed set is a walk of that trie
//! that stops at the first byte the recognizer refuses, so a step visits the few thousand
//! nodes that can follow, not all tokens. Inside a string, where nearly every token fits, the
//! tokens made only of ordinary string characters are allowed from a precomputed bit set and
//! the walk covers only the rest (quotes, backslashes, partial UTF-8).
//!
//! Written here rather than taken from a crate: llguidance/toktrie (the maintained Rust
//! engines) bring a regex-automaton stack that takes minutes to compile on the 2-core
//! machines this project builds on, and bora needs only JSON and a JSON-schema subset over
//! token bytes it already has.

use std::sync::Arc;

use bora_tokenizer::Tokenizer;
use serde_json::Value;

/// A schema bora cannot enforce, or one that is malformed; the message names the place
/// (`$.properties.age`) and the keyword.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON schema at {path}: {reason}")]
pub struct SchemaError {
    pub path: String,
    pub reason: String,
}

/// Deepest nesting of objects and arrays the recognizer follows (any-JSON values and
/// `$ref`s both stop here), so an answer never grows the stack without bound.
const MAX_DEPTH: usize = 32;
/// Whitespace bytes allowed in a row between JSON tokens: room for `": "` and a leading space,
/// not for a model that pads forever.
const MAX_WS: u8 = 1;
/// Digits of a number's integer or fraction part (the exponent gets 2): integers stay within
/// i64 and no number overflows a double, which parsers reject or turn into infinity.
const MAX_DIGITS: u8 = 18;
/// Keys of one object the recognizer tracks (`seen` is a bit set).
const MAX_KEYS: usize = 64;

const ANY: u32 = 0;
const ANY_OBJECT: u32 = 1;
const ANY_ARRAY: u32 = 2;
const ANY_STRING: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Any,
    Null,
    Boolean,
    Integer,
    Number,
    String,
    /// Compact JSON texts of the allowed values, sorted and deduplicated, so the values that
    /// share a prefix form one range.
    Enum(Vec<Vec<u8>>),
    Array {
        items: u32,
        min: u32,
        max: u32,
    },
    /// `keys` are JSON-encoded (with their quotes) and sorted; `additional` is the schema of
    /// keys not listed, for objects without `properties`.
    Object {
        keys: Vec<Vec<u8>>,
        values: Vec<u32>,
        required: u64,
        additional: Option<u32>,
    },
    /// Alternatives told apart by their first byte.
    Choice(Vec<u32>),
}

/// A compiled schema: nodes addressed by index, the root first after the three built-in
/// any-value nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    nodes: Vec<Node>,
    root: u32,
}

impl JsonSchema {
    /// Any JSON object (OpenAI's `json_object`).
    pub fn any_object() -> JsonSchema {
        JsonSchema {
            nodes: builtin_nodes(),
            root: ANY_OBJECT,
        }
    }

    /// Any JSON value.
    pub fn any_value() -> JsonSchema {
        JsonSchema {
            nodes: builtin_nodes(),
            root: ANY,
        }
    }

    /// Compiles `schema`. Keywords that only annotate (`title`, `description`, `default`,
    /// `examples`, `$schema`, `$id`, `$defs`, `definitions`, `strict`) are ignored; any
    /// other keyword outside the supported subset is an error naming it, since silently
    /// ignoring a constraint would return answers the caller's validator rejects.
    pub fn compile(schema: &Value) -> Result<JsonSchema, SchemaError> {
        let mut c = Compiler {
            nodes: builtin_nodes(),
            root: schema,
            refs: Vec::new(),
        };
        let root = c.node(schema, "$", 0)?;
        Ok(JsonSchema {
            nodes: c.nodes,
            root,
        })
    }
}

fn builtin_nodes() -> Vec<Node> {
    vec![
        Node::Any,
        Node::Object {
            keys: Vec::new(),
            values: Vec::new(),
            required: 0,
            additional: Some(ANY),
        },
        Node::Array {
            items: ANY,
            min: 0,
            max: u32::MAX,
        },
        Node::String,
    ]
}

struct Compiler<'a> {
    nodes: Vec<Node>,
    root: &'a Value,
    /// `$ref`s being expanded, to refuse recursive schemas.
    refs: Vec<String>,
}

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$defs",
    "definitions",
    "$comment",
    "strict",
];

impl<'a> Compiler<'a> {
    fn push(&mut self, node: Node) -> u32 {
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    fn node(&mut self, s: &'a Value, path: &str, depth: usize) -> Result<u32, SchemaError> {
        let err = |reason: String| SchemaError {
            path: path.to_string(),
            reason,
        };
        if depth > MAX_DEPTH {
            return Err(err(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let obj = match s {
            Value::Bool(true) => return Ok(ANY),
            Value::Object(o) => o,
            _ => return Err(err("a schema must be an object (or `true`)".into())),
        };
        let supported = [
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "enum",
            "const",
            "anyOf",
            "$ref",
        ];
        let unsupported: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| !supported.contains(k) && !ANNOTATIONS.contains(k))
            .collect();
        if !unsupported.is_empty() {
            return Err(err(format!(
                "unsupported keyword(s): {}; bora enforces type, properties, required, additionalProperties, items, minItems, maxItems, enum, const, anyOf and local $ref",
                unsupported.join(", ")
            )));
        }
        if let Some(r) = obj.get("$ref") {
            if obj.len()
                > 1 + obj
                    .keys()
                    .filter(|k| ANNOTATIONS.contains(&k.as_str()))
                    .count()
            {
                return Err(err("`$ref` beside other constraints".into()));
            }
            let r = r
                .as_str()
                .ok_or_else(|| err("`$ref` must be a string".into()))?;
            if self.refs.iter().any(|x| x == r) {
                return Err(err(format!("recursive `$ref` {r:?}")));
            }
            let target = r
                .strip_prefix('#')
                .and_then(|p| self.root.pointer(p))
                .ok_or_else(|| {
                    err(format!(
                        "`$ref` {r:?} does not point into this schema (only local `#/...` references)"
                    ))
                })?;
            self.refs.push(r.to_string());
            let id = self.node(target, r, depth + 1);
            self.refs.pop();
            return id;
        }
        if let Some(values) = obj.get("enum").or_else(|| obj.get("const").map(|_| s)) {
            let list: Vec<&Value> = match (obj.get("enum"), obj.get("const")) {
                (Some(Value::Array(a)), None) => a.iter().collect(),
                (None, Some(c)) => vec![c],
                _ => {
                    return Err(err(
                        "`enum` must be an array, and not given with `const`".into()
                    ))
                }
            };
            let _ = values;
            if list.is_empty() {
                return Err(err("`enum` is empty: no value can match".into()));
            }
            let mut texts: Vec<Vec<u8>> = list
                .iter()
                .map(|v| serde_json::to_vec(v).expect("a JSON value serializes"))
                .collect();
            texts.sort();
            texts.dedup();
            return Ok(self.push(Node::Enum(texts)));
        }
        if let Some(alts) = obj.get("anyOf") {
            let alts = alts
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| err("`anyOf` must be a non-empty array".into()))?;
            let ids = alts
                .iter()
                .enumerate()
                .map(|(i, a)| self.node(a, &format!("{path}.anyOf[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return self.choice(ids, path);
        }
        let types: Vec<&str> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts
                .iter()
                .map(|t| t.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("`type` must be a string or a list of strings".into()))?,
            Some(_) => return Err(err("`type` must be a string or a list of strings".into())),
        };
        if types.is_empty() {
            if obj.contains_key("properties") {
                return self.object(obj, path, depth);
            }
            if obj.contains_key("items") {
                return self.array(obj, path, depth);
            }
            return Ok(ANY);
        }
        let mut ids = Vec::new();
        for t in types {
            ids.push(match t {
                "null" => self.push(Node::Null),
                "boolean" => self.push(Node::Boolean),
                "integer" => self.push(Node::Integer),
                "number" => self.push(Node::Number),
                "string" => self.push(Node::String),
                "object" => self.object(obj, path, depth)?,
                "array" => self.array(obj, path, depth)?,
                other => return Err(err(format!("unknown type {other:?}"))),
            });
        }
        self.choice(ids, path)
    }

    /// One node for several alternatives; each must start with bytes no other can.
    fn choice(&mut self, ids: Vec<u32>, path: &str) -> Result<u32, SchemaError> {
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        let mut taken = [false; 256];
        let mut flat = Vec::new();
        for id in ids {
            match &self.nodes[id as usize] {
                Node::Choice(inner) => flat.extend(inner.iter().copied()),
                _ => flat.push(id),
            }
        }
        for &id in &flat {
            for b in 0..=255u8 {
                if starts(&self.nodes, id, b) {
                    if taken[b as usize] {
                        return Err(SchemaError {
                            path: path.to_string(),
                            reason: "alternatives (anyOf or a list of types) that can start with the same character; bora needs them to differ in their first character (e.g. string | null, not integer | number)".into(),
                        });
                    }
                    taken[b as usize] = true;
                }
            }
        }
        Ok(self.push(Node::Choice(flat)))
    }

    fn object(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<u32, SchemaError> {
        let err = |reason: String| SchemaError {
            path: path.to_string(),
            reason,
        };
        let props = match obj.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(err("`properties` must be an object".into())),
        };
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(Value::as_str)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("`required` must be a list of strings".into()))?,
            Some(_) => return Err(err("`required` must be a list of strings".into())),
        };
        let Some(props) = props.filter(|p| !p.is_empty()) else {
            if let Some(r) = required.first() {
                return Err(err(format!(
                    "`required` names {r:?} but `properties` does not define it"
                )));
            }
            let additional = match obj.get("additionalProperties") {
                None | Some(Value::Bool(true)) => Some(ANY),
                Some(Value::Bool(false)) => None,
                Some(s) => {
                    Some(self.node(s, &format!("{path}.additionalProperties"), depth + 1)?)
                }
            };
            return Ok(self.push(Node::Object {
                keys: Vec::new(),
                values: Vec::new(),
                required: 0,
                additional,
            }));
        };
        if props.len() > MAX_KEYS {
            return Err(err(format!(
                "more than {MAX_KEYS} properties in one object"
            )));
        }
        // Listed properties only: extra keys would still satisfy a schema that allows them,
        // and an answer with only the listed ones satisfies one that does not.
        let mut entries = Vec::new();
        for (name, sub) in props {
            let id = self.node(sub, &format!("{path}.properties.{name}"), depth + 1)?;
            let key = serde_json::to_vec(&Value::String(name.clone())).expect("a string");
            entries.push((key, id, name.as_str()));
        }
        entries.sort();
        let mut mask = 0u64;
        for r in &required {
            let i = entries.iter().position(|(_, _, n)| n == r).ok_or_else(|| {
                err(format!(
                    "`required` names {r:?} but `properties` does not define it"
                ))
            })?;
            mask |= 1 << i;
        }
        Ok(self.push(Node::Object {
            keys: entries.iter().map(|e| e.0.clone()).collect(),
            values: entries.iter().map(|e| e.1).collect(),
            required: mask,
            additional: None,
        }))
    }

    fn array(
        &mut self,
        obj: &'a serde_json::Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<u32, SchemaError> {
        let err = |reason: String| SchemaError {
            path: path.to_string(),
            reason,
        };
        let items = match obj.get("items") {
            None => ANY,
            Some(s) => self.node(s, &format!("{path}.items"), depth + 1)?,
        };
        let count = |key: &str| -> Result<Option<u32>, SchemaError> {
            obj.get(key)
                .map(|v| {
                    v.as_u64()
                        .map(|n| n.min(u32::MAX as u64) as u32)
                        .ok_or_else(|| err(format!("`{key}` must be a non-negative integer")))
                })
                .transpose()
        };
        let min = count("minItems")?.unwrap_or(0);
        let max = count("maxItems")?.unwrap_or(u32::MAX);
        if min > max {
            return Err(err(format!("minItems {min} exceeds maxItems {max}")));
        }
        Ok(self.push(Node::Array { items, min, max }))
    }
}

/// Whether a value of node `id` can start with byte `b` (whitespace not counted).
fn starts(nodes: &[Node], id: u32, b: u8) -> bool {
    match &nodes[id as usize] {
        Node::Any => b"{[\"-0123456789tfn".contains(&b),
        Node::Null => b == b'n',
        Node::Boolean => b == b't' || b == b'f',
        Node::Integer | Node::Number => b == b'-' || b.is_ascii_digit(),
        Node::String => b == b'"',
        Node::Enum(texts) => texts.iter().any(|t| t[0] == b),
        Node::Array { .. } => b == b'[',
        Node::Object { .. } => b == b'{',
        Node::Choice(alts) => alts.iter().any(|&a| starts(nodes, a, b)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn terminal(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }

    fn next(self, b: u8, integer: bool) -> Option<Num> {
        let digit = b.is_ascii_digit();
        Some(match (self, b) {
            // `-0` is an integer to JSON schema but a float to many parsers (serde_json).
            (Num::Minus, b'0') if !integer => Num::Zero,
            (Num::Minus, b'0') => return None,
            (Num::Minus, _) if digit => Num::Int,
            (Num::Int, _) if digit => Num::Int,
            (Num::Zero | Num::Int, b'.') if !integer => Num::Dot,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') if !integer => Num::Exp,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpDigits, _) if digit => Num::ExpDigits,
            _ => return None,
        })
    }
}

/// One level of the recognizer's stack. Containers stay below their current child, already
/// in the state they take once the child is complete, so finishing a value is a pop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    /// The whole answer is complete: only the end of the sequence may follow.
    Done,
    Value(u32),
    Literal(&'static [u8], u8),
    Enum {
        node: u32,
        lo: u32,
        hi: u32,
        pos: u32,
    },
    Str {
        /// 0: plain; 1: after a backslash; 2..=5: hex digits of `\u` left (6: the second
        /// digit after `\uD`, which must keep the code point out of the surrogates).
        esc: u8,
        /// UTF-8 continuation bytes still due, and the range of the next one.
        need: u8,
        lo: u8,
        hi: u8,
    },
    /// The grammar state, whether only integers are allowed, and the digits of the current
    /// part (integer, fraction or exponent) so far.
    Number(Num, bool, u8),
    /// After `[` (`count` 0) or after `,` (`count` items so far): a value, or `]` after `[`.
    ArrayOpen {
        node: u32,
        count: u32,
    },
    /// After an item: `,` or `]`.
    ArrayNext {
        node: u32,
        count: u32,
    },
    /// After `{` (`first`) or after `,`: a key, or `}` after `{`.
    ObjectOpen {
        node: u32,
        seen: u64,
        first: bool,
    },
    /// Inside a listed key: the keys in `lo..hi` match the bytes so far.
    Key {
        node: u32,
        seen: u64,
        lo: u32,
        hi: u32,
        pos: u32,
    },
    /// After a key: `:`, then the value of property `prop` (`u32::MAX`: an unlisted key).
    Colon {
        node: u32,
        seen: u64,
        prop: u32,
    },
    ObjectNext {
        node: u32,
        seen: u64,
    },
}

/// Follows a JSON text byte by byte against a [`JsonSchema`].
#[derive(Debug, Clone)]
pub struct Recognizer {
    schema: Arc<JsonSchema>,
    stack: Vec<Frame>,
    ws: u8,
}

impl Recognizer {
    pub fn new(schema: Arc<JsonSchema>) -> Recognizer {
        let root = schema.root;
        Recognizer {
            schema,
            stack: vec![Frame::Done, Frame::Value(root)],
            ws: 0,
        }
    }

    /// Whether the text so far is a complete answer.
    pub fn can_end(&self) -> bool {
        let n = self.stack.len();
        match self.stack[n - 1] {
            Frame::Done => true,
            Frame::Number(s, _, _) => s.terminal() && n == 2,
            Frame::Enum { node, lo, hi, pos } => n == 2 && self.enum_complete(node, lo, hi, pos),
            _ => false,
        }
    }

    /// Whether nothing but the end may follow.
    pub fn is_complete(&self) -> bool {
        self.stack.len() == 1
    }

    /// Takes `bytes`; false (and a state to drop) when they cannot continue a valid answer.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.byte(b))
    }

    fn enum_texts(&self, node: u32) -> &[Vec<u8>] {
        match &self.schema.nodes[node as usize] {
            Node::Enum(t) => t,
            _ => unreachable!("enum frames point at enum nodes"),
        }
    }

    fn enum_complete(&self, node: u32, lo: u32, hi: u32, pos: u32) -> bool {
        self.enum_texts(node)[lo as usize..hi as usize]
            .iter()
            .any(|t| t.len() == pos as usize)
    }

    /// Starts a value of `node` with byte `b` in place of the top frame.
    fn start_value(&mut self, node: u32, b: u8) -> bool {
        let depth_left = self.stack.len() < MAX_DEPTH;
        let nodes = &self.schema.nodes;
        let frame = match &nodes[node as usize] {
            Node::Choice(alts) => {
                return match alts.iter().find(|&&a| starts(nodes, a, b)) {
                    Some(&a) => self.start_value(a, b),
                    None => false,
                }
            }
            Node::Any => match b {
                b'{' => return self.start_value(ANY_OBJECT, b),
                b'[' => return self.start_value(ANY_ARRAY, b),
                b'"' => return self.start_value(ANY_STRING, b),
                b't' | b'f' => Frame::Literal(if b == b't' { b"true" } else { b"false" }, 1),
                b'n' => Frame::Literal(b"null", 1),
                b'-' | b'0'..=b'9' => Frame::Number(Num::Minus, false, 0),
                _ => return false,
            },
            Node::Null if b == b'n' => Frame::Literal(b"null", 1),
            Node::Boolean if b == b't' => Frame::Literal(b"true", 1),
            Node::Boolean if b == b'f' => Frame::Literal(b"false", 1),
            Node::String if b == b'"' => Frame::Str {
                esc: 0,
                need: 0,
                lo: 0,
                hi: 0,
            },
            Node::Integer | Node::Number if b == b'-' || b.is_ascii_digit() => {
                Frame::Number(Num::Minus, matches!(nodes[node as usize], Node::Integer), 0)
            }
            Node::Enum(texts) => {
                *top(&mut self.stack) = Frame::Enum {
                    node,
                    lo: 0,
                    hi: texts.len() as u32,
                    pos: 0,
                };
                return self.step(b);
            }
            Node::Array { .. } if b == b'[' && depth_left => Frame::ArrayOpen { node, count: 0 },
            Node::Object { .. } if b == b'{' && depth_left => Frame::ObjectOpen {
                node,
                seen: 0,
                first: true,
            },
            _ => return false,
        };
        if let Frame::Number(_, integer, _) = frame {
            // The sign or first digit goes through the number grammar.
            *top(&mut self.stack) = Frame::Number(Num::Minus, integer, 0);
            if b == b'-' {
                return true;
            }
            return self.step(b);
        }
        *top(&mut self.stack) = frame;
        true
    }

    fn byte(&mut self, b: u8) -> bool {
        let ok = self.step(b);
        if ok && !matches!(b, b' ' | b'\n') {
            self.ws = 0;
        }
        ok
    }

    fn step(&mut self, b: u8) -> bool {
        let frame = *top(&mut self.stack);
        match frame {
            Frame::Done => false,
            Frame::Value(node) => space(&mut self.ws, b) || self.start_value(node, b),
            Frame::Literal(text, pos) => {
                if text[pos as usize] != b {
                    return false;
                }
                if pos as usize + 1 == text.len() {
                    self.stack.pop();
                } else {
                    *top(&mut self.stack) = Frame::Literal(text, pos + 1);
                }
                true
            }
            Frame::Enum { node, lo, hi, pos } => {
                let Node::Enum(texts) = &self.schema.nodes[node as usize] else {
                    unreachable!("enum frames point at enum nodes")
                };
                let p = pos as usize;
                let range = &texts[lo as usize..hi as usize];
                let first = range.iter().position(|t| t.get(p) == Some(&b));
                match first {
                    Some(f) => {
                        let n = range[f..]
                            .iter()
                            .take_while(|t| t.get(p) == Some(&b))
                            .count();
                        let lo = lo + f as u32;
                        let hi = lo + n as u32;
                        *top(&mut self.stack) = Frame::Enum {
                            node,
                            lo,
                            hi,
                            pos: pos + 1,
                        };
                        if n == 1
                            && texts[lo as usize].len() == p + 1
                            && !ends_open(&texts[lo as usize])
                        {
                            self.stack.pop();
                        }
                        true
                    }
                    None if range.iter().any(|t| t.len() == p) => {
                        self.stack.pop();
                        self.step(b)
                    }
                    None => false,
                }
            }
            Frame::Str { esc, need, lo, hi } => {
                let next = if need > 0 {
                    (lo..=hi).contains(&b).then_some((0, need - 1, 0x80, 0xBF))
                } else {
                    match esc {
                        1 => match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                Some((0, 0, 0, 0))
                            }
                            b'u' => Some((2, 0, 0, 0)),
                            _ => None,
                        },
                        2 if b == b'd' || b == b'D' => Some((6, 0, 0, 0)),
                        2..=5 if b.is_ascii_hexdigit() => {
                            Some((if esc == 5 { 0 } else { esc + 1 }, 0, 0, 0))
                        }
                        6 if (b'0'..=b'7').contains(&b) => Some((4, 0, 0, 0)),
                        2..=6 => None,
                        _ => match b {
                            b'"' => {
                                self.stack.pop();
                                return true;
                            }
                            b'\\' => Some((1, 0, 0, 0)),
                            0..=0x1F => None,
                            0x20..=0x7F => Some((0, 0, 0, 0)),
                            0xC2..=0xDF => Some((0, 1, 0x80, 0xBF)),
                            0xE0 => Some((0, 2, 0xA0, 0xBF)),
                            0xED => Some((0, 2, 0x80, 0x9F)),
                            0xE1..=0xEF => Some((0, 2, 0x80, 0xBF)),
                            0xF0 => Some((0, 3, 0x90, 0xBF)),
                            0xF1..=0xF3 => Some((0, 3, 0x80, 0xBF)),
                            0xF4 => Some((0, 3, 0x80, 0x8F)),
                            _ => None,
                        },
                    }
                };
                match next {
                    Some((esc, need, lo, hi)) => {
                        *top(&mut self.stack) = Frame::Str { esc, need, lo, hi };
                        true
                    }
                    None => false,
                }
            }
            Frame::Number(state, integer, digits) => match state.next(b, integer) {
                Some(s) => {
                    let digits = if s == state { digits + 1 } else { 1 };
                    let most = if s == Num::ExpDigits { 2 } else { MAX_DIGITS };
                    *top(&mut self.stack) = Frame::Number(s, integer, digits);
                    digits <= most
                }
                None if state.terminal() => {
                    self.stack.pop();
                    self.step(b)
                }
                None => false,
            },
            Frame::ArrayOpen { node, count } => {
                let Node::Array { items, min, max } = self.schema.nodes[node as usize] else {
                    unreachable!("array frames point at array nodes")
                };
                if space(&mut self.ws, b) {
                    return true;
                }
                if b == b']' && count == 0 && min == 0 {
                    self.stack.pop();
                    return true;
                }
                if count >= max || !starts(&self.schema.nodes, items, b) {
                    return false;
                }
                *top(&mut self.stack) = Frame::ArrayNext {
                    node,
                    count: count + 1,
                };
                self.stack.push(Frame::Value(items));
                self.start_value(items, b)
            }
            Frame::ArrayNext { node, count } => {
                let Node::Array { min, max, .. } = self.schema.nodes[node as usize] else {
                    unreachable!("array frames point at array nodes")
                };
                match b {
                    b',' if count < max => {
                        *top(&mut self.stack) = Frame::ArrayOpen { node, count };
                        true
                    }
                    b']' if count >= min => {
                        self.stack.pop();
                        true
                    }
                    _ => space(&mut self.ws, b),
                }
            }
            Frame::ObjectOpen { node, seen, first } => {
                let Node::Object {
                    keys,
                    required,
                    additional,
                    ..
                } = &self.schema.nodes[node as usize]
                else {
                    unreachable!("object frames point at object nodes")
                };
                if space(&mut self.ws, b) {
                    return true;
                }
                if b == b'}' && first && required & !seen == 0 {
                    self.stack.pop();
                    return true;
                }
                if b != b'"' {
                    return false;
                }
                if additional.is_some() {
                    *top(&mut self.stack) = Frame::Colon {
                        node,
                        seen,
                        prop: u32::MAX,
                    };
                    self.stack.push(Frame::Str {
                        esc: 0,
                        need: 0,
                        lo: 0,
                        hi: 0,
                    });
                    return true;
                }
                let n = keys.len() as u32;
                *top(&mut self.stack) = Frame::Key {
                    node,
                    seen,
                    lo: 0,
                    hi: n,
                    pos: 1,
                };
                has_unseen(seen, 0, n)
            }
            Frame::Key {
                node,
                seen,
                lo,
                hi,
                pos,
            } => {
                let Node::Object { keys, .. } = &self.schema.nodes[node as usize] else {
                    unreachable!("object frames point at object nodes")
                };
                let p = pos as usize;
                let range = &keys[lo as usize..hi as usize];
                let Some(f) = range.iter().position(|k| k.get(p) == Some(&b)) else {
                    return false;
                };
                let n = range[f..]
                    .iter()
                    .take_while(|k| k.get(p) == Some(&b))
                    .count() as u32;
                let lo = lo + f as u32;
                let hi = lo + n;
                if !has_unseen(seen, lo, hi) {
                    return false;
                }
                *top(&mut self.stack) = if keys[lo as usize].len() == p + 1 {
                    // A complete encoded key is no other key's prefix, so it stands alone.
                    Frame::Colon {
                        node,
                        seen: seen | 1 << lo,
                        prop: lo,
                    }
                } else {
                    Frame::Key {
                        node,
                        seen,
                        lo,
                        hi,
                        pos: pos + 1,
                    }
                };
                true
            }
            Frame::Colon { node, seen, prop } => {
                if space(&mut self.ws, b) {
                    return true;
                }
                if b != b':' {
                    return false;
                }
                let Node::Object {
                    values, additional, ..
                } = &self.schema.nodes[node as usize]
                else {
                    unreachable!("object frames point at object nodes")
                };
                let value = if prop == u32::MAX {
                    additional.expect("unlisted keys only where additional is set")
                } else {
                    values[prop as usize]
                };
                *top(&mut self.stack) = Frame::ObjectNext { node, seen };
                self.stack.push(Frame::Value(value));
                true
            }
            Frame::ObjectNext { node, seen } => {
                let Node::Object {
                    keys,
                    required,
                    additional,
                    ..
                } = &self.schema.nodes[node as usize]
                else {
                    unreachable!("object frames point at object nodes")
                };
                match b {
                    b',' if additional.is_some() || has_unseen(seen, 0, keys.len() as u32) => {
                        *top(&mut self.stack) = Frame::ObjectOpen {
                            node,
                            seen,
                            first: false,
                        };
                        true
                    }
                    b'}' if required & !seen == 0 => {
                        self.stack.pop();
                        true
                    }
                    _ => space(&mut self.ws, b),
                }
            }
        }
    }
}

fn top(stack: &mut [Frame]) -> &mut Frame {
    stack.last_mut().expect("the Done frame stays")
}

/// Takes a whitespace byte where a bounded run of them may stand.
fn space(ws: &mut u8, b: u8) -> bool {
    if matches!(b, b' ' | b'\n') && *ws < MAX_WS {
        *ws += 1;
        return true;
    }
    false
}

/// Whether an enum value's last byte leaves it open to more (a number: `1` may become `12`).
fn ends_open(text: &[u8]) -> bool {
    text.last().is_some_and(|b| b.is_ascii_digit())
}

fn has_unseen(seen: u64, lo: u32, hi: u32) -> bool {
    (lo..hi).any(|i| seen & (1 << i) == 0)
}

impl Recognizer {
    /// Copies `other`'s state without allocating once the stack has grown.
    fn copy_from(&mut self, other: &Recognizer) {
        self.stack.clear();
        self.stack.extend_from_slice(&other.stack);
        self.ws = other.ws;
    }

    /// Inside a free string with no escape or character pending: every plain-text token
    /// continues it and leaves the state as it is.
    fn in_plain_string(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Str {
                esc: 0,
                need: 0,
                ..
            })
        )
    }
}

/// A trie over token byte strings, flattened: node `i`'s children are
/// `edges[first_edge[i]..first_edge[i + 1]]`, the tokens ending there likewise in `ends`.
#[derive(Debug, Default)]
struct Trie {
    first_edge: Vec<u32>,
    edges: Vec<(u8, u32)>,
    first_end: Vec<u32>,
    ends: Vec<u32>,
    depth: usize,
}

impl Trie {
    fn build(tokens: &[(u32, &[u8])]) -> Trie {
        // Children as sorted maps while building, flattened breadth-agnostic afterwards.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
        let mut depth = 0;
        for &(id, bytes) in tokens {
            depth = depth.max(bytes.len());
            let mut node = 0usize;
            for &b in bytes {
                node = match children[node].binary_search_by_key(&b, |e| e.0) {
                    Ok(i) => children[node][i].1 as usize,
                    Err(i) => {
                        let new = children.len();
                        children.push(Vec::new());
                        ends.push(Vec::new());
                        children[node].insert(i, (b, new as u32));
                        new
                    }
                };
            }
            ends[node].push(id);
        }
        let mut t = Trie {
            depth,
            ..Trie::default()
        };
        for (c, e) in children.iter().zip(&ends) {
            t.first_edge.push(t.edges.len() as u32);
            t.edges.extend_from_slice(c);
            t.first_end.push(t.ends.len() as u32);
            t.ends.extend_from_slice(e);
        }
        t.first_edge.push(t.edges.len() as u32);
        t.first_end.push(t.ends.len() as u32);
        t
    }

    fn edges(&self, node: u32) -> &[(u8, u32)] {
        let n = node as usize;
        &self.edges[self.first_edge[n] as usize..self.first_edge[n + 1] as usize]
    }

    fn ends(&self, node: u32) -> &[u32] {
        let n = node as usize;
        &self.ends[self.first_end[n] as usize..self.first_end[n + 1] as usize]
    }
}

/// A tokenizer's vocabulary arranged for constrained decoding; built once and shared by every
/// constrained sequence.
#[derive(Debug)]
pub struct VocabIndex {
    /// The bytes each token adds to the text (empty for control tokens, never allowed).
    bytes: Vec<Vec<u8>>,
    all: Trie,
    /// Tokens that are not plain string text.
    rest: Trie,
    /// Bit set of tokens made only of string characters that need no escape: valid UTF-8
    /// without `"`, `\` or control characters.
    plain: Vec<u64>,
}

impl VocabIndex {
    pub fn new(tok: &Tokenizer) -> VocabIndex {
        VocabIndex::from_token_bytes(
            (0..tok.vocab_size() as u32)
                .map(|id| {
                    if tok.is_special(id) {
                        Vec::new()
                    } else {
                        tok.token_bytes(id)
                    }
                })
                .collect(),
        )
    }

    /// An index over token `i` having bytes `bytes[i]` (empty: never allowed).
    pub fn from_token_bytes(bytes: Vec<Vec<u8>>) -> VocabIndex {
        let n = bytes.len();
        let mut plain = vec![0u64; n.div_ceil(64)];
        let (mut all, mut rest) = (Vec::new(), Vec::new());
        for (id, b) in bytes.iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            all.push((id as u32, b.as_slice()));
            let is_plain = std::str::from_utf8(b).is_ok()
                && b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
            if is_plain {
                plain[id / 64] |= 1 << (id % 64);
            } else {
                rest.push((id as u32, b.as_slice()));
            }
        }
        VocabIndex {
            all: Trie::build(&all),
            rest: Trie::build(&rest),
            bytes,
            plain,
        }
    }

    /// Writes into `out` (a bit set over the vocabulary) the tokens that may follow `r`.
    fn allowed(&self, r: &Recognizer, scratch: &mut Vec<Recognizer>, out: &mut [u64]) {
        let trie = if r.in_plain_string() {
            out.copy_from_slice(&self.plain);
            &self.rest
        } else {
            out.fill(0);
            &self.all
        };
        while scratch.len() <= trie.depth {
            scratch.push(r.clone());
        }
        scratch[0].copy_from(r);
        walk(trie, 0, 0, scratch, out);
    }
}

fn walk(trie: &Trie, node: u32, depth: usize, states: &mut [Recognizer], out: &mut [u64]) {
    for &(b, child) in trie.edges(node) {
        let (done, next) = states.split_at_mut(depth + 1);
        next[0].copy_from(&done[depth]);
        if next[0].byte(b) {
            for &id in trie.ends(child) {
                out[id as usize / 64] |= 1 << (id % 64);
            }
            walk(trie, child, depth + 1, states, out);
        }
    }
}

/// The constraint of one generation: tokens forced first (e.g. a tool-call control token),
/// then a JSON answer of a schema, then only a stop token.
#[derive(Debug)]
pub struct JsonConstraint {
    index: Arc<VocabIndex>,
    prefix: Vec<u32>,
    fed: usize,
    rec: Recognizer,
    scratch: Vec<Recognizer>,
    mask: Vec<u64>,
}

impl JsonConstraint {
    pub fn new(index: Arc<VocabIndex>, schema: Arc<JsonSchema>) -> JsonConstraint {
        let words = index.plain.len();
        JsonConstraint {
            index,
            prefix: Vec::new(),
            fed: 0,
            rec: Recognizer::new(schema),
            scratch: Vec::new(),
            mask: vec![0; words],
        }
    }

    /// The answer must start with exactly `tokens` (any ids, control tokens included).
    pub fn with_prefix(mut self, tokens: Vec<u32>) -> JsonConstraint {
        self.prefix = tokens;
        self
    }

    /// Sets the logits of tokens that cannot come next to -inf; `stop_tokens` stay only once
    /// the answer is complete. False when no token at all may come (the vocabulary cannot
    /// continue the answer), so the caller ends the sequence.
    pub fn mask_logits(&mut self, logits: &mut [f32], stop_tokens: &[u32]) -> bool {
        if let Some(&forced) = self.prefix.get(self.fed) {
            for (i, l) in logits.iter_mut().enumerate() {
                if i != forced as usize {
                    *l = f32::NEG_INFINITY;
                }
            }
            return (forced as usize) < logits.len();
        }
        if self.rec.is_complete() {
            self.mask.fill(0);
        } else {
            self.index
                .allowed(&self.rec, &mut self.scratch, &mut self.mask);
        }
        let can_end = self.rec.can_end();
        let mut any = false;
        for (i, l) in logits.iter_mut().enumerate() {
            let ok = self
                .mask
                .get(i / 64)
                .is_some_and(|w| w >> (i % 64) & 1 == 1)
                || (can_end && stop_tokens.contains(&(i as u32)));
            if ok {
                any |= l.is_finite();
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        any
    }

    /// Advances past `token`, which [`JsonConstraint::mask_logits`] allowed (a stop token
    /// leaves the state as it is).
    pub fn accept(&mut self, token: u32) {
        if self.fed < self.prefix.len() {
            self.fed += 1;
            return;
        }
        if let Some(bytes) = self.index.bytes.get(token as usize) {
            let ok = self.rec.feed(bytes);
            debug_assert!(ok, "token {token} was not allowed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;
    use serde_json::json;

    fn accepts(schema: &Value, text: &str) -> bool {
        let mut r = Recognizer::new(Arc::new(JsonSchema::compile(schema).unwrap()));
        r.feed(text.as_bytes()) && r.can_end()
    }

    #[test]
    fn recognizer_follows_the_schema() {
        let person = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 2},
                "ok": {"type": ["boolean", "null"]}
            },
            "required": ["name", "age"]
        });
        for good in [
            r#"{"name":"Ann","age":31}"#,
            r#" {"age": -5, "name": "\u00e9\n\"", "tags": ["b", 3], "ok": null}"#,
            r#"{"name":"Zoë 日本","age":7,"ok":true,"tags":[]}"#,
        ] {
            assert!(accepts(&person, good), "{good}");
        }
        for bad in [
            r#"{"name":"Ann"}"#,
            r#"{"name":"Ann","age":1.5}"#,
            r#"{"name":"Ann","age":01}"#,
            r#"{"name":"Ann","age":-0}"#,
            r#"{"name":"Ann","age":1234567890123456789}"#,
            r#"{"name":"Ann","age":1,"name":"B"}"#,
            r#"{"name":"Ann","age":1,"x":1}"#,
            r#"{"name":"Ann","age":1,"tags":["c"]}"#,
            r#"{"name":"Ann","age":1,"tags":[3,3,3]}"#,
            r#"{"name":"Ann","age":1,}"#,
            r#"{"name":"\ud800","age":1}"#,
            "{\"name\":\"a\tb\",\"age\":1}",
            r#"{"name":"Ann","age":1}  "#,
            r#"{"name":"Ann","age":1} x"#,
        ] {
            assert!(!accepts(&person, bad), "{bad}");
        }
        let any = json!({});
        assert!(accepts(&any, "[1,{\"a\":[true,null,\"x\"]},-2.5e+3]"));
        assert!(accepts(&any, "12"));
        assert!(!accepts(&any, "1."));
        let nums = json!({"enum": [1, 12, "x"]});
        assert!(accepts(&nums, "1") && accepts(&nums, "12") && accepts(&nums, "\"x\""));
        assert!(!accepts(&nums, "123") && !accepts(&nums, "2"));
    }

    #[test]
    fn unsupported_keywords_are_named() {
        let e = JsonSchema::compile(&json!({
            "type": "object",
            "properties": {"age": {"type": "integer", "minimum": 0, "format": "x"}}
        }))
        .unwrap_err();
        assert_eq!(e.path, "$.properties.age");
        assert!(
            e.reason.contains("minimum") && e.reason.contains("format"),
            "{e}"
        );
        assert!(JsonSchema::compile(&json!({"type": ["integer", "number"]})).is_err());
        assert!(JsonSchema::compile(
            &json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})
        )
        .is_err());
        assert!(JsonSchema::compile(&json!({"type": "object", "required": ["x"]})).is_err());
    }

    /// A vocabulary like a real one: every single byte, structural pieces, words, numbers
    /// and multi-byte characters whole and split.
    fn vocabulary() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for piece in [
            "{\"", "\":", "\": ", "\",", "\", \"", "\"}", "}}", "]}", "[{", "{}", "[]", "true",
            "false", "null", "name", "age", " the", "ing", "\\n", "\\\"", "\\u00", "12", "345",
            "0.", ".5", "e-", "é", "日本", "😀", "\",\"", "\"]", ", ", "-1", "\n", "  ",
        ] {
            v.push(piece.as_bytes().to_vec());
        }
        v.push("é".as_bytes()[..1].to_vec());
        v.push("😀".as_bytes()[1..].to_vec());
        v.push(Vec::new());
        v
    }

    /// A random schema of the supported subset, `depth` levels deep at most.
    fn random_schema(rng: &mut Rng, depth: usize) -> Value {
        let pick = rng.next_u64() % if depth == 0 { 6 } else { 9 };
        match pick {
            0 => json!({"type": "string"}),
            1 => json!({"type": "integer"}),
            2 => json!({"type": "number"}),
            3 => json!({"type": "boolean"}),
            4 => json!({"enum": ["red", "green", 7, null, [1], {"k": "v"}]}),
            5 => json!({"type": ["string", "null"]}),
            6 => {
                let min = rng.next_u64() % 2;
                json!({"type": "array", "items": random_schema(rng, depth - 1), "minItems": min, "maxItems": min + 2})
            }
            7 => {
                json!({"anyOf": [{"type": "integer"}, {"type": "array", "items": random_schema(rng, depth - 1)}, {"type": "null"}]})
            }
            _ => {
                let n = 1 + rng.next_u64() % 4;
                let mut props = serde_json::Map::new();
                let mut required = Vec::new();
                for i in 0..n {
                    let name = ["id", "name", "n\u{e9}", "a\"b", "tags", "idx"][i as usize];
                    props.insert(name.to_string(), random_schema(rng, depth - 1));
                    if rng.next_u64().is_multiple_of(2) {
                        required.push(name);
                    }
                }
                json!({"type": "object", "properties": props, "required": required})
            }
        }
    }

    /// The subset's meaning, written from the JSON-schema specification, to check answers.
    fn valid(v: &Value, s: &Value) -> bool {
        if let Some(options) = s.get("enum") {
            return options.as_array().unwrap().contains(v);
        }
        if let Some(alts) = s.get("anyOf") {
            return alts.as_array().unwrap().iter().any(|a| valid(v, a));
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t],
            Some(Value::Array(t)) => t.iter().map(|t| t.as_str().unwrap()).collect(),
            _ => return true,
        };
        types.iter().any(|t| match (*t, v) {
            ("string", Value::String(_)) | ("boolean", Value::Bool(_)) | ("null", Value::Null) => {
                true
            }
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
            ("number", Value::Number(_)) => true,
            ("array", Value::Array(items)) => {
                let n = items.len() as u64;
                s.get("minItems")
                    .and_then(Value::as_u64)
                    .is_none_or(|m| n >= m)
                    && s.get("maxItems")
                        .and_then(Value::as_u64)
                        .is_none_or(|m| n <= m)
                    && s.get("items")
                        .is_none_or(|i| items.iter().all(|x| valid(x, i)))
            }
            ("object", Value::Object(o)) => {
                let props = s["properties"].as_object().unwrap();
                s["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| o.contains_key(r.as_str().unwrap()))
                    && o.iter()
                        .all(|(k, x)| props.get(k).is_some_and(|p| valid(x, p)))
            }
            _ => false,
        })
    }

    /// Random logits each step, masked, sampled: whatever the "model" prefers, the answer
    /// parses and satisfies the schema once it ends.
    #[test]
    fn random_schemas_random_logits_always_valid_answers() {
        let vocab = vocabulary();
        let eos = vocab.len() as u32;
        let index = Arc::new(VocabIndex::from_token_bytes(vocab.clone()));
        let mut rng = Rng::new(42);
        let mut ended = 0;
        for case in 0..300 {
            let schema = random_schema(&mut rng, 3);
            let compiled = Arc::new(JsonSchema::compile(&schema).unwrap());
            let mut c = JsonConstraint::new(index.clone(), compiled);
            let mut text = Vec::new();
            let mut logits = vec![0f32; vocab.len() + 1];
            for _ in 0..400 {
                for l in logits.iter_mut() {
                    *l = (rng.next_f64() * 8.0) as f32;
                }
                // Lean towards ending, so most answers finish within the budget.
                logits[eos as usize] += 6.0;
                assert!(
                    c.mask_logits(&mut logits, &[eos]),
                    "case {case}: dead end after {:?}",
                    String::from_utf8_lossy(&text)
                );
                let t = crate::sample::argmax(&logits);
                if t == eos {
                    let v: Value = serde_json::from_slice(&text).unwrap_or_else(|e| {
                        panic!("case {case}: {e}: {:?}", String::from_utf8_lossy(&text))
                    });
                    assert!(valid(&v, &schema), "case {case}: {v} against {schema}");
                    ended += 1;
                    break;
                }
                c.accept(t);
                text.extend_from_slice(&vocab[t as usize]);
            }
        }
        assert!(ended > 250, "only {ended} of 300 answers ended");
    }

    #[test]
    fn the_mask_is_what_feeding_each_token_says() {
        let vocab = vocabulary();
        let index = VocabIndex::from_token_bytes(vocab.clone());
        let schema = Arc::new(JsonSchema::compile(&json!({"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "number"}}})).unwrap());
        for prefix in [
            "",
            "{",
            "{\"na",
            "{\"name\":\"x",
            "{\"name\":\"x\\",
            "{\"name\":\"\u{e9}",
            "{\"n\":1",
            "{\"n\":1e",
        ] {
            let mut r = Recognizer::new(schema.clone());
            let mut bytes = prefix.as_bytes().to_vec();
            if prefix.ends_with('\u{e9}') {
                bytes.pop();
            }
            assert!(r.feed(&bytes), "{prefix}");
            let mut mask = vec![0u64; vocab.len().div_ceil(64)];
            index.allowed(&r, &mut Vec::new(), &mut mask);
            for (id, tok) in vocab.iter().enumerate() {
                let want = !tok.is_empty() && r.clone().feed(tok);
                assert_eq!(
                    mask[id / 64] >> (id % 64) & 1 == 1,
                    want,
                    "{prefix:?} then {:?}",
                    String::from_utf8_lossy(tok)
                );
            }
        }
    }
}
