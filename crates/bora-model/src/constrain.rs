//! Constrained decoding to JSON: the answer is always a JSON value, and with a schema a value
//! of that schema's subset (types, properties, required, enum/const, items, min/maxItems,
//! min/maxLength, pattern, format, minimum/maximum and their exclusive forms, nesting, anyOf
//! of alternatives that differ in their first character or in a string `const` property
//! written first, local `$ref`s). docs/serve.md lists what each keyword guarantees.
//!
//! A byte-level pushdown recognizer ([`Recognizer`]) follows the text written so far. Which
//! tokens may come next is decided on the tokenizer's real vocabulary: every token's bytes go
//! into a trie once per tokenizer ([`VocabIndex`]), and the allowed set is a walk of that trie
//! that stops at the first byte the recognizer refuses, so a step visits the few thousand
//! nodes that can follow, not all tokens. Inside a string, where nearly every token fits, the
//! tokens made only of ordinary string characters are allowed from a precomputed bit set and
//! the walk covers only the rest (quotes, backslashes, partial UTF-8). A `pattern` runs as a
//! dense DFA (regex-automata) over the string's decoded bytes, stepped with the recognizer.
//!
//! Written here rather than taken from llguidance/toktrie (the maintained Rust engines, which
//! support all of JSON schema): the recognizer works on the vocabulary bora already has and
//! costs no new dependency beyond regex-automata, already in the build; docs/serve.md records
//! the comparison (llguidance's build time and dependencies measured on this project's
//! machines) and when a switch would pay.

use std::sync::Arc;

use bora_tokenizer::Tokenizer;
use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::Anchored;
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
const ANY_NUMBER: u32 = 4;
/// Significant digits of a number with bounds: below 2^53, so its value is exact in a double
/// and the bounds are checked on the value a parser reads.
const MAX_BOUNDED_DIGITS: u32 = 15;
/// Largest DFA a `pattern` or `format` may compile to.
const MAX_DFA_BYTES: usize = 4 << 20;

/// `minimum`/`maximum` and their exclusive forms; infinite where not given.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bounds {
    lo: f64,
    lo_exclusive: bool,
    hi: f64,
    hi_exclusive: bool,
}

impl Bounds {
    const NONE: Bounds = Bounds {
        lo: f64::NEG_INFINITY,
        lo_exclusive: false,
        hi: f64::INFINITY,
        hi_exclusive: false,
    };

    fn is_none(&self) -> bool {
        *self == Bounds::NONE
    }

    fn contains(&self, x: f64) -> bool {
        (x > self.lo || !self.lo_exclusive && x == self.lo)
            && (x < self.hi || !self.hi_exclusive && x == self.hi)
    }

    /// Whether some value in `[a, b)` lies within (`a == b`: the point `a`).
    fn meets(&self, a: f64, b: f64) -> bool {
        if a == b {
            return self.contains(a);
        }
        (a < self.hi || !self.hi_exclusive && a == self.hi) && b > self.lo
    }

    /// The bounds on `-x` where these bound `x`.
    fn negated(&self) -> Bounds {
        Bounds {
            lo: -self.hi,
            lo_exclusive: self.hi_exclusive,
            hi: -self.lo,
            hi_exclusive: self.lo_exclusive,
        }
    }
}

/// A compiled `pattern` (or `format`): a DFA over the string's decoded bytes that accepts
/// the strings containing a match, as JSON schema's unanchored `pattern` does.
#[derive(Debug, Clone)]
struct Pattern {
    source: String,
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    /// For each state reachable from `start`, the fewest characters that lead from it to a
    /// match (absent: none does), so `maxLength` never lets in a string that cannot end.
    distance: std::collections::HashMap<StateID, u32>,
}

impl Pattern {
    /// Characters still needed after reaching `state` (`u32::MAX`: no match can follow).
    fn distance(&self, state: StateID) -> u32 {
        self.distance.get(&state).copied().unwrap_or(u32::MAX)
    }
}

/// Bytes a JSON string's text can get where a pattern applies: printable bytes and UTF-8,
/// and the control characters with short escapes (`\b \f \n \r \t`).
fn string_byte(b: u8) -> bool {
    b >= 0x20 || matches!(b, 0x08 | 0x0C | b'\n' | b'\r' | b'\t')
}

/// The fewest characters from each state reachable from `start` to a match: a breadth-first
/// walk backwards from the accepting states, where a UTF-8 continuation byte costs nothing.
fn match_distances(
    dfa: &dense::DFA<Vec<u32>>,
    start: StateID,
) -> std::collections::HashMap<StateID, u32> {
    use std::collections::{HashMap, VecDeque};
    let mut index: HashMap<StateID, usize> = HashMap::from([(start, 0)]);
    let mut states = vec![start];
    let mut back: Vec<Vec<(usize, u32)>> = vec![Vec::new()];
    let mut i = 0;
    while i < states.len() {
        let s = states[i];
        for b in (0..=255u8).filter(|&b| string_byte(b)) {
            let t = dfa.next_state(s, b);
            if dfa.is_dead_state(t) || dfa.is_quit_state(t) {
                continue;
            }
            let j = *index.entry(t).or_insert_with(|| {
                states.push(t);
                back.push(Vec::new());
                states.len() - 1
            });
            back[j].push((i, u32::from(!(0x80..=0xBF).contains(&b))));
        }
        i += 1;
    }
    let mut distance = vec![u32::MAX; states.len()];
    let mut queue = VecDeque::new();
    for (k, &s) in states.iter().enumerate() {
        if dfa.is_match_state(dfa.next_eoi_state(s)) {
            distance[k] = 0;
            queue.push_back(k);
        }
    }
    while let Some(k) = queue.pop_front() {
        for &(from, cost) in &back[k] {
            let d = distance[k] + cost;
            if d < distance[from] {
                distance[from] = d;
                if cost == 0 {
                    queue.push_front(from);
                } else {
                    queue.push_back(from);
                }
            }
        }
    }
    states
        .into_iter()
        .zip(distance)
        .filter(|&(_, d)| d != u32::MAX)
        .collect()
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

/// Formats enforced as patterns. Dates are checked for their shape and field ranges (month
/// 01-12, day 01-31), not for the days of each month.
const FORMATS: &[(&str, &str)] = &[
    (
        "date",
        r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$",
    ),
    (
        "date-time",
        r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
    ),
    (
        "time",
        r"^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$",
    ),
    (
        "email",
        r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$",
    ),
    (
        "uuid",
        r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    ),
];

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Any,
    Null,
    Boolean,
    Integer(Bounds),
    Number(Bounds),
    /// Length bounds in characters, and the index of a pattern in [`JsonSchema::patterns`].
    String {
        min: u32,
        max: u32,
        pattern: Option<u32>,
    },
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
    /// Objects told apart by the value of one string property, written first: `key` is
    /// JSON-encoded, `tags` are the sorted JSON texts of its values, and `variants[i]` is the
    /// object node for `tags[i]` with the index of `key` among that object's keys.
    Tagged {
        key: Vec<u8>,
        tags: Vec<Vec<u8>>,
        variants: Vec<(u32, u32)>,
    },
}

/// A compiled schema: nodes addressed by index, the root first after the three built-in
/// any-value nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    nodes: Vec<Node>,
    patterns: Vec<Pattern>,
    root: u32,
}

impl JsonSchema {
    /// Any JSON object (OpenAI's `json_object`).
    pub fn any_object() -> JsonSchema {
        JsonSchema {
            nodes: builtin_nodes(),
            patterns: Vec::new(),
            root: ANY_OBJECT,
        }
    }

    /// Any JSON value.
    pub fn any_value() -> JsonSchema {
        JsonSchema {
            nodes: builtin_nodes(),
            patterns: Vec::new(),
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
            patterns: Vec::new(),
            root: schema,
            refs: Vec::new(),
        };
        let root = c.node(schema, "$", 0)?;
        Ok(JsonSchema {
            nodes: c.nodes,
            patterns: c.patterns,
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
        Node::String {
            min: 0,
            max: u32::MAX,
            pattern: None,
        },
        Node::Number(Bounds::NONE),
    ]
}

struct Compiler<'a> {
    nodes: Vec<Node>,
    patterns: Vec<Pattern>,
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
            "minLength",
            "maxLength",
            "pattern",
            "format",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
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
                "unsupported keyword(s): {}; bora enforces type, properties, required, additionalProperties, items, minItems, maxItems, minLength, maxLength, pattern, format, minimum, maximum, exclusiveMinimum, exclusiveMaximum, enum, const, anyOf and local $ref",
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
            // A union of one tagged object still has its tag written first, like a union of
            // several (a tool call's name before its arguments).
            if let [one] = ids[..] {
                if matches!(self.nodes[one as usize], Node::Object { .. }) {
                    return Ok(self.tagged(&[one]).unwrap_or(one));
                }
            }
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
                "integer" => {
                    let bounds = self.bounds(obj, path)?;
                    self.push(Node::Integer(bounds))
                }
                "number" => {
                    let bounds = self.bounds(obj, path)?;
                    self.push(Node::Number(bounds))
                }
                "string" => self.string(obj, path)?,
                "object" => self.object(obj, path, depth)?,
                "array" => self.array(obj, path, depth)?,
                other => return Err(err(format!("unknown type {other:?}"))),
            });
        }
        self.choice(ids, path)
    }

    /// One node for several alternatives; each must start with bytes no other can, except
    /// objects told apart by a tag property ([`Compiler::tagged`]).
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
        let objects: Vec<u32> = flat
            .iter()
            .copied()
            .filter(|&id| matches!(self.nodes[id as usize], Node::Object { .. }))
            .collect();
        if objects.len() > 1 {
            if let Some(tagged) = self.tagged(&objects) {
                flat.retain(|id| !objects.contains(id));
                flat.push(tagged);
                if flat.len() == 1 {
                    return Ok(tagged);
                }
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

    /// One node for `objects` when one property, required in each, holds a string constant
    /// (or enum) that tells them apart: the discriminated unions of tool calls (`name`) and
    /// of tagged data types. `None` when there is no such property.
    fn tagged(&mut self, objects: &[u32]) -> Option<u32> {
        let first_keys = match &self.nodes[objects[0] as usize] {
            Node::Object { keys, .. } => keys.clone(),
            _ => return None,
        };
        'key: for key in first_keys {
            let mut entries: Vec<(Vec<u8>, (u32, u32))> = Vec::new();
            for &id in objects {
                let Node::Object {
                    keys,
                    values,
                    required,
                    ..
                } = &self.nodes[id as usize]
                else {
                    return None;
                };
                let Some(k) = keys.iter().position(|x| *x == key) else {
                    continue 'key;
                };
                if required & (1 << k) == 0 {
                    continue 'key;
                }
                let Node::Enum(texts) = &self.nodes[values[k] as usize] else {
                    continue 'key;
                };
                if !texts.iter().all(|t| t.first() == Some(&b'"')) {
                    continue 'key;
                }
                entries.extend(texts.iter().map(|t| (t.clone(), (id, k as u32))));
            }
            entries.sort();
            if entries.windows(2).any(|w| w[0].0 == w[1].0) {
                continue;
            }
            let (tags, variants) = entries.into_iter().unzip();
            return Some(self.push(Node::Tagged {
                key,
                tags,
                variants,
            }));
        }
        None
    }

    /// `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers, as since
    /// draft 6).
    fn bounds(
        &self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<Bounds, SchemaError> {
        let mut b = Bounds::NONE;
        for (key, exclusive, upper) in [
            ("minimum", false, false),
            ("exclusiveMinimum", true, false),
            ("maximum", false, true),
            ("exclusiveMaximum", true, true),
        ] {
            let Some(v) = obj.get(key) else { continue };
            let x = v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| SchemaError {
                    path: path.to_string(),
                    reason: format!("`{key}` must be a number"),
                })?;
            if upper {
                if x < b.hi || x == b.hi && exclusive {
                    (b.hi, b.hi_exclusive) = (x, exclusive);
                }
            } else if x > b.lo || x == b.lo && exclusive {
                (b.lo, b.lo_exclusive) = (x, exclusive);
            }
        }
        if b.lo > b.hi || b.lo == b.hi && (b.lo_exclusive || b.hi_exclusive) {
            return Err(SchemaError {
                path: path.to_string(),
                reason: "the bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum) leave no value".into(),
            });
        }
        Ok(b)
    }

    /// A string node: `minLength`, `maxLength` and one of `pattern` or `format`.
    fn string(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<u32, SchemaError> {
        let err = |reason: String| SchemaError {
            path: path.to_string(),
            reason,
        };
        let (min, max) = count_bounds(obj, path, "minLength", "maxLength")?;
        let source =
            match (obj.get("pattern"), obj.get("format")) {
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(err(
                        "`pattern` together with `format`: give one of them".into()
                    ))
                }
                (Some(Value::String(p)), None) => Some(("pattern", p.clone())),
                (Some(_), None) => return Err(err("`pattern` must be a string".into())),
                (None, Some(f)) => {
                    let name = f.as_str().unwrap_or_default();
                    let regex =
                        FORMATS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                            err(format!(
                            "unsupported keyword value: format {f}; bora enforces the formats {}",
                            FORMATS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                        ))
                        })?;
                    Some(("format", regex.1.to_string()))
                }
            };
        let pattern = match source {
            None => None,
            Some((keyword, source)) => {
                let compiled = compile_pattern(&source).map_err(|reason| {
                    err(format!(
                        "unsupported keyword value: {keyword} {source:?}: {reason}"
                    ))
                })?;
                self.patterns.push(compiled);
                Some(self.patterns.len() as u32 - 1)
            }
        };
        Ok(self.push(Node::String { min, max, pattern }))
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
        let items = match obj.get("items") {
            None => ANY,
            Some(s) => self.node(s, &format!("{path}.items"), depth + 1)?,
        };
        let (min, max) = count_bounds(obj, path, "minItems", "maxItems")?;
        Ok(self.push(Node::Array { items, min, max }))
    }
}

/// A pair of count keywords (`minItems`/`maxItems`, `minLength`/`maxLength`): 0 and
/// `u32::MAX` where not given.
fn count_bounds(
    obj: &serde_json::Map<String, Value>,
    path: &str,
    min_key: &str,
    max_key: &str,
) -> Result<(u32, u32), SchemaError> {
    let err = |reason: String| SchemaError {
        path: path.to_string(),
        reason,
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
    let min = count(min_key)?.unwrap_or(0);
    let max = count(max_key)?.unwrap_or(u32::MAX);
    if min > max {
        return Err(err(format!("{min_key} {min} exceeds {max_key} {max}")));
    }
    Ok((min, max))
}

/// Compiles a JSON-schema `pattern` (an ECMA-262 regular expression, searched anywhere in
/// the string) to a DFA over UTF-8 bytes. The subset is what regex-automata supports:
/// literals, `.`, classes (`[a-z]`, `\d`, `\w`, `\s` and negations; `\d` and `\w` are
/// ASCII as in ECMA-262), groups, alternation, `?`, `*`, `+`, `{n,m}` (lazy forms
/// match the same strings), `^` and `$`. Look-around and back-references are refused.
fn compile_pattern(source: &str) -> Result<Pattern, String> {
    let mut ascii = String::with_capacity(source.len() + 16);
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            ascii.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => ascii.push_str("[0-9]"),
            Some('D') => ascii.push_str("[^0-9]"),
            Some('w') => ascii.push_str("[0-9A-Za-z_]"),
            Some('W') => ascii.push_str("[^0-9A-Za-z_]"),
            Some(other) => {
                ascii.push('\\');
                ascii.push(other);
            }
            None => return Err("ends with a lone backslash".into()),
        }
    }
    // Unanchored, as JSON schema searches: any text around a match.
    let regex = format!("(?s:.)*(?:{ascii})(?s:.)*");
    let dfa = dense::Builder::new()
        .configure(
            // Minimal, so that every state from which no match can be reached is the dead
            // state: the constraint then never lets a string in that cannot end.
            dense::Config::new()
                .minimize(true)
                .dfa_size_limit(Some(MAX_DFA_BYTES))
                .determinize_size_limit(Some(MAX_DFA_BYTES)),
        )
        .build(&regex)
        .map_err(|e| {
            let text = e.to_string();
            match std::error::Error::source(&e) {
                Some(cause) => format!("{text}: {cause}"),
                None => text,
            }
        })?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| e.to_string())?;
    let distance = match_distances(&dfa, start);
    Ok(Pattern {
        source: source.to_string(),
        dfa,
        start,
        distance,
    })
}

/// Whether a value of node `id` can start with byte `b` (whitespace not counted).
fn starts(nodes: &[Node], id: u32, b: u8) -> bool {
    match &nodes[id as usize] {
        Node::Any => b"{[\"-0123456789tfn".contains(&b),
        Node::Null => b == b'n',
        Node::Boolean => b == b't' || b == b'f',
        Node::Integer(_) | Node::Number(_) => b == b'-' || b.is_ascii_digit(),
        Node::String { .. } => b == b'"',
        Node::Enum(texts) => texts.iter().any(|t| t[0] == b),
        Node::Array { .. } => b == b'[',
        Node::Object { .. } | Node::Tagged { .. } => b == b'{',
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
        /// The string node (its length bounds and pattern), characters so far, and the
        /// pattern's DFA state after the decoded bytes so far.
        node: u32,
        chars: u32,
        dfa: StateID,
    },
    /// A number so far: its grammar state, its node (integer or not, bounds), the digits of
    /// the current part (integer, fraction or exponent), its sign, and, for bounds, its
    /// digits as an integer and how many of them are fraction digits.
    Number {
        state: Num,
        node: u32,
        digits: u8,
        negative: bool,
        mantissa: u64,
        fraction: u8,
    },
    /// A tagged union's object before its tag: `pos` bytes of the tag key matched.
    TagKey {
        node: u32,
        pos: u32,
    },
    /// After the tag key: `:`.
    TagColon {
        node: u32,
    },
    /// The tag value: the tags in `lo..hi` match the `pos` bytes so far.
    TagValue {
        node: u32,
        lo: u32,
        hi: u32,
        pos: u32,
    },
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
            Frame::Number { .. } => n == 2 && self.number_can_end(self.stack[n - 1]),
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
                b'-' | b'0'..=b'9' => return self.start_value(ANY_NUMBER, b),
                b't' | b'f' => Frame::Literal(if b == b't' { b"true" } else { b"false" }, 1),
                b'n' => Frame::Literal(b"null", 1),
                _ => return false,
            },
            Node::Null if b == b'n' => Frame::Literal(b"null", 1),
            Node::Boolean if b == b't' => Frame::Literal(b"true", 1),
            Node::Boolean if b == b'f' => Frame::Literal(b"false", 1),
            Node::String { pattern, .. } if b == b'"' => Frame::Str {
                esc: 0,
                need: 0,
                lo: 0,
                hi: 0,
                node,
                chars: 0,
                dfa: pattern.map_or(StateID::ZERO, |p| self.schema.patterns[p as usize].start),
            },
            Node::Integer(_) | Node::Number(_) if b == b'-' || b.is_ascii_digit() => {
                // The sign or first digit goes through the number grammar.
                *top(&mut self.stack) = Frame::Number {
                    state: Num::Minus,
                    node,
                    digits: 0,
                    negative: b == b'-',
                    mantissa: 0,
                    fraction: 0,
                };
                if b != b'-' {
                    return self.step(b);
                }
                let bounds = self.bounds(node);
                let integer = matches!(self.schema.nodes[node as usize], Node::Integer(_));
                return bounds.is_none()
                    || Recognizer::number_reachable(bounds, integer, Num::Minus, 0, true, 0, 0);
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
            Node::Tagged { .. } if b == b'{' && depth_left => Frame::TagKey { node, pos: 0 },
            _ => return false,
        };
        *top(&mut self.stack) = frame;
        true
    }

    /// Whether a number frame may end here: a complete number within its bounds.
    fn number_can_end(&self, frame: Frame) -> bool {
        let Frame::Number {
            state,
            node,
            negative,
            mantissa,
            fraction,
            ..
        } = frame
        else {
            return false;
        };
        if !state.terminal() {
            return false;
        }
        let bounds = self.bounds(node);
        if bounds.is_none() {
            return true;
        }
        let magnitude = mantissa as f64 / 10f64.powi(fraction as i32);
        bounds.contains(if negative { -magnitude } else { magnitude })
    }

    fn bounds(&self, node: u32) -> Bounds {
        match self.schema.nodes[node as usize] {
            Node::Integer(b) | Node::Number(b) => b,
            _ => Bounds::NONE,
        }
    }

    /// Whether a number with this prefix can still end within `bounds`: the values its
    /// continuations reach, as ranges of the magnitude, meet the bounds on the magnitude.
    fn number_reachable(
        bounds: Bounds,
        integer: bool,
        state: Num,
        digits: u8,
        negative: bool,
        mantissa: u64,
        fraction: u8,
    ) -> bool {
        let b = if negative { bounds.negated() } else { bounds };
        let v = mantissa as f64 / 10f64.powi(fraction as i32);
        // The smallest and largest allowed integers.
        let lo_int = if b.lo_exclusive {
            b.lo.floor() + 1.0
        } else {
            b.lo.ceil()
        };
        let hi_int = if b.hi_exclusive {
            b.hi.ceil() - 1.0
        } else {
            b.hi.floor()
        };
        // Whether [a, end) holds an allowed value (integers: a and end are whole).
        let meets = |a: f64, end: f64| {
            if integer {
                a <= hi_int && end - 1.0 >= lo_int
            } else {
                b.meets(a, end)
            }
        };
        match state {
            Num::Minus => b.meets(0.0, f64::INFINITY),
            Num::Zero => b.contains(0.0) || !integer && b.meets(0.0, 1.0),
            Num::Int => {
                if b.contains(v) || !integer && b.meets(v, v + 1.0) {
                    return true;
                }
                let room = MAX_BOUNDED_DIGITS.saturating_sub(digits as u32);
                (1..=room as i32).any(|j| {
                    let scale = 10f64.powi(j);
                    meets(v * scale, (v + 1.0) * scale)
                })
            }
            Num::Dot => b.meets(v, v + 1.0),
            Num::Frac => b.meets(v, v + 10f64.powi(-(fraction as i32))),
            Num::Exp | Num::ExpSign | Num::ExpDigits => false,
        }
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
            Frame::Str {
                esc,
                need,
                lo,
                hi,
                node,
                chars,
                dfa,
            } => {
                let Node::String { min, max, pattern } = self.schema.nodes[node as usize] else {
                    unreachable!("string frames point at string nodes")
                };
                // The byte the string's text gets (escapes decoded), if this byte settles one.
                let mut decoded = None;
                let mut starts_char = false;
                let next = if need > 0 {
                    decoded = Some(b);
                    (lo..=hi).contains(&b).then_some((0, need - 1, 0x80, 0xBF))
                } else {
                    match esc {
                        1 => match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                                decoded = Some(match b {
                                    b'b' => 0x08,
                                    b'f' => 0x0C,
                                    b'n' => b'\n',
                                    b'r' => b'\r',
                                    b't' => b'\t',
                                    other => other,
                                });
                                Some((0, 0, 0, 0))
                            }
                            // A pattern reads decoded bytes; `\u` escapes are not decoded.
                            b'u' if pattern.is_none() => Some((2, 0, 0, 0)),
                            _ => None,
                        },
                        2 if b == b'd' || b == b'D' => Some((6, 0, 0, 0)),
                        2..=5 if b.is_ascii_hexdigit() => {
                            Some((if esc == 5 { 0 } else { esc + 1 }, 0, 0, 0))
                        }
                        6 if (b'0'..=b'7').contains(&b) => Some((4, 0, 0, 0)),
                        2..=6 => None,
                        _ => {
                            starts_char = b != b'"';
                            if b >= 0x20 && b != b'"' && b != b'\\' {
                                decoded = Some(b);
                            }
                            match b {
                                b'"' => {
                                    let matched = pattern.is_none_or(|p| {
                                        let d = &self.schema.patterns[p as usize].dfa;
                                        d.is_match_state(d.next_eoi_state(dfa))
                                    });
                                    if chars < min || !matched {
                                        return false;
                                    }
                                    self.stack.pop();
                                    return true;
                                }
                                // With a pattern, only where some escape can follow.
                                b'\\' => pattern
                                    .is_none_or(|p| {
                                        let p = &self.schema.patterns[p as usize];
                                        b"\"\\/\x08\x0C\n\r\t".iter().any(|&e| {
                                            let needed = p.distance(p.dfa.next_state(dfa, e));
                                            needed != u32::MAX
                                                && chars.saturating_add(1).saturating_add(needed)
                                                    <= max
                                        })
                                    })
                                    .then_some((1, 0, 0, 0)),
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
                            }
                        }
                    }
                };
                let Some((esc, need, lo, hi)) = next else {
                    return false;
                };
                let chars = chars + u32::from(starts_char);
                if chars > max {
                    return false;
                }
                let mut dfa = dfa;
                if let (Some(p), Some(byte)) = (pattern, decoded) {
                    let p = &self.schema.patterns[p as usize];
                    dfa = p.dfa.next_state(dfa, byte);
                    // A match must stay reachable within the length left.
                    let needed = p.distance(dfa);
                    if needed == u32::MAX || chars.saturating_add(needed) > max {
                        return false;
                    }
                }
                *top(&mut self.stack) = Frame::Str {
                    esc,
                    need,
                    lo,
                    hi,
                    node,
                    chars,
                    dfa,
                };
                true
            }
            Frame::Number {
                state,
                node,
                digits,
                negative,
                mantissa,
                fraction,
            } => {
                let integer = matches!(self.schema.nodes[node as usize], Node::Integer(_));
                match state.next(b, integer) {
                    Some(s) => {
                        let digits = if s == state { digits + 1 } else { 1 };
                        let most = if s == Num::ExpDigits { 2 } else { MAX_DIGITS };
                        if digits > most {
                            return false;
                        }
                        let bounds = self.bounds(node);
                        let (mut mantissa, mut fraction) = (mantissa, fraction);
                        if !bounds.is_none() {
                            if b.is_ascii_digit() {
                                mantissa = mantissa * 10 + u64::from(b - b'0');
                                fraction += u8::from(s == Num::Frac);
                            }
                            let exact = mantissa < 10u64.pow(MAX_BOUNDED_DIGITS);
                            if !exact
                                || !Recognizer::number_reachable(
                                    bounds, integer, s, digits, negative, mantissa, fraction,
                                )
                            {
                                return false;
                            }
                        }
                        *top(&mut self.stack) = Frame::Number {
                            state: s,
                            node,
                            digits,
                            negative,
                            mantissa,
                            fraction,
                        };
                        true
                    }
                    None if self.number_can_end(frame) => {
                        self.stack.pop();
                        self.step(b)
                    }
                    None => false,
                }
            }
            Frame::TagKey { node, pos } => {
                let Node::Tagged { key, .. } = &self.schema.nodes[node as usize] else {
                    unreachable!("tag frames point at tagged nodes")
                };
                if pos == 0 && space(&mut self.ws, b) {
                    return true;
                }
                if key[pos as usize] != b {
                    return false;
                }
                *top(&mut self.stack) = if pos as usize + 1 == key.len() {
                    Frame::TagColon { node }
                } else {
                    Frame::TagKey { node, pos: pos + 1 }
                };
                true
            }
            Frame::TagColon { node } => {
                if space(&mut self.ws, b) {
                    return true;
                }
                let Node::Tagged { tags, .. } = &self.schema.nodes[node as usize] else {
                    unreachable!("tag frames point at tagged nodes")
                };
                if b != b':' {
                    return false;
                }
                *top(&mut self.stack) = Frame::TagValue {
                    node,
                    lo: 0,
                    hi: tags.len() as u32,
                    pos: 0,
                };
                true
            }
            Frame::TagValue { node, lo, hi, pos } => {
                if pos == 0 && space(&mut self.ws, b) {
                    return true;
                }
                let Node::Tagged { tags, variants, .. } = &self.schema.nodes[node as usize] else {
                    unreachable!("tag frames point at tagged nodes")
                };
                let p = pos as usize;
                let Some((lo, hi)) = narrow(tags, lo, hi, p, b) else {
                    return false;
                };
                *top(&mut self.stack) = if tags[lo as usize].len() == p + 1 {
                    // A complete tag (a JSON string) is no other tag's prefix: the object
                    // goes on as the variant it names, its tag key seen.
                    let (object, key) = variants[lo as usize];
                    Frame::ObjectNext {
                        node: object,
                        seen: 1 << key,
                    }
                } else {
                    Frame::TagValue {
                        node,
                        lo,
                        hi,
                        pos: pos + 1,
                    }
                };
                true
            }
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
                        node: ANY_STRING,
                        chars: 0,
                        dfa: StateID::ZERO,
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
                let Some((lo, hi)) = narrow(keys, lo, hi, p, b) else {
                    return false;
                };
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

/// Of the sorted `texts[lo..hi]` that agree on their first `pos` bytes, the range whose next
/// byte is `b`; `None` if none is.
fn narrow(texts: &[Vec<u8>], lo: u32, hi: u32, pos: usize, b: u8) -> Option<(u32, u32)> {
    let range = &texts[lo as usize..hi as usize];
    let first = range.iter().position(|t| t.get(pos) == Some(&b))?;
    let n = range[first..]
        .iter()
        .take_while(|t| t.get(pos) == Some(&b))
        .count();
    let lo = lo + first as u32;
    Some((lo, lo + n as u32))
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

    /// Inside a string without a pattern, with no escape or character pending, every
    /// plain-text token of at most the characters still allowed continues it, whatever the
    /// state: those characters (`u32::MAX` without `maxLength`), else `None`.
    fn plain_string_room(&self) -> Option<u32> {
        match self.stack.last() {
            Some(&Frame::Str {
                esc: 0,
                need: 0,
                node,
                chars,
                ..
            }) => match self.schema.nodes[node as usize] {
                Node::String {
                    max, pattern: None, ..
                } => Some(max.saturating_sub(chars)),
                _ => None,
            },
            _ => None,
        }
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
    /// The plain tokens as (characters, id), fewest characters first, so a `maxLength`
    /// string takes the ones that fit without walking the trie.
    plain_by_chars: Vec<(u32, u32)>,
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
        let mut plain_by_chars = Vec::new();
        let (mut all, mut rest) = (Vec::new(), Vec::new());
        for (id, b) in bytes.iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            all.push((id as u32, b.as_slice()));
            let text = std::str::from_utf8(b)
                .ok()
                .filter(|_| b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\'));
            if let Some(text) = text {
                plain[id / 64] |= 1 << (id % 64);
                plain_by_chars.push((text.chars().count() as u32, id as u32));
            } else {
                rest.push((id as u32, b.as_slice()));
            }
        }
        VocabIndex {
            all: Trie::build(&all),
            rest: Trie::build(&rest),
            bytes,
            plain,
            plain_by_chars: {
                plain_by_chars.sort_unstable();
                plain_by_chars
            },
        }
    }

    /// Writes into `out` (a bit set over the vocabulary) the tokens that may follow `r`.
    fn allowed(&self, r: &Recognizer, scratch: &mut Vec<Recognizer>, out: &mut [u64]) {
        let trie = match r.plain_string_room() {
            Some(room) => {
                self.plain_within(room, out);
                &self.rest
            }
            None => {
                out.fill(0);
                &self.all
            }
        };
        while scratch.len() <= trie.depth {
            scratch.push(r.clone());
        }
        scratch[0].copy_from(r);
        walk(trie, 0, 0, scratch, out);
    }

    /// Writes into `out` the plain tokens of at most `room` characters.
    fn plain_within(&self, room: u32, out: &mut [u64]) {
        if self
            .plain_by_chars
            .last()
            .is_none_or(|&(chars, _)| chars <= room)
        {
            out.copy_from_slice(&self.plain);
            return;
        }
        out.fill(0);
        for &(_, id) in self
            .plain_by_chars
            .iter()
            .take_while(|&&(chars, _)| chars <= room)
        {
            out[id as usize / 64] |= 1 << (id % 64);
        }
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
            "properties": {"age": {"type": "integer", "multipleOf": 2, "uniqueItems": true}}
        }))
        .unwrap_err();
        assert_eq!(e.path, "$.properties.age");
        assert!(
            e.reason.contains("multipleOf") && e.reason.contains("uniqueItems"),
            "{e}"
        );
        for (schema, keyword) in [
            (json!({"type": "string", "pattern": "(?=a)b"}), "pattern"),
            (json!({"type": "string", "pattern": "(a)\\1"}), "pattern"),
            (json!({"type": "string", "pattern": "a("}), "pattern"),
            (json!({"type": "string", "format": "ipv4"}), "format"),
            (
                json!({"type": "string", "minLength": 3, "maxLength": 2}),
                "minLength",
            ),
            (json!({"type": "string", "maxLength": -1}), "maxLength"),
            (
                json!({"type": "integer", "minimum": 3, "maximum": 2}),
                "bounds",
            ),
            (
                json!({"type": "number", "exclusiveMinimum": 1, "maximum": 1}),
                "bounds",
            ),
            (
                json!({"type": "number", "exclusiveMinimum": true}),
                "exclusiveMinimum",
            ),
            (
                json!({"type": "string", "pattern": "a", "format": "date"}),
                "pattern",
            ),
        ] {
            let e = JsonSchema::compile(&schema).unwrap_err();
            assert!(e.reason.contains(keyword), "{schema}: {e}");
        }
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
        if let Some(c) = s.get("const") {
            return v == c;
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
                s.get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
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
        let index = Arc::new(VocabIndex::from_token_bytes(vocabulary()));
        let mut rng = Rng::new(42);
        let mut ended = 0;
        for _ in 0..300 {
            let schema = random_schema(&mut rng, 3);
            if let Some(v) = sample_answer(&schema, &index, &mut rng) {
                assert!(valid(&v, &schema), "{v} against {schema}");
                ended += 1;
            }
        }
        assert!(ended > 250, "only {ended} of 300 answers ended");
    }

    /// Samples an answer to `schema` from random logits over [`vocabulary`], leaning towards
    /// ending so most answers finish; `None` if it did not end within 400 tokens.
    fn sample_answer(schema: &Value, index: &Arc<VocabIndex>, rng: &mut Rng) -> Option<Value> {
        let vocab = vocabulary();
        let eos = vocab.len() as u32;
        let compiled = Arc::new(JsonSchema::compile(schema).unwrap());
        let mut c = JsonConstraint::new(index.clone(), compiled);
        let mut text = Vec::new();
        let mut logits = vec![0f32; vocab.len() + 1];
        for _ in 0..400 {
            for l in logits.iter_mut() {
                *l = (rng.next_f64() * 8.0) as f32;
            }
            logits[eos as usize] += 6.0;
            assert!(
                c.mask_logits(&mut logits, &[eos]),
                "{schema}: dead end after {:?}",
                String::from_utf8_lossy(&text)
            );
            let t = crate::sample::argmax(&logits);
            if t == eos {
                return Some(serde_json::from_slice(&text).unwrap_or_else(|e| {
                    panic!("{schema}: {e}: {:?}", String::from_utf8_lossy(&text))
                }));
            }
            c.accept(t);
            text.extend_from_slice(&vocab[t as usize]);
        }
        None
    }

    /// Each keyword with random "model" preferences, many seeds: every answer that ends
    /// satisfies the keyword, checked here from its definition in the JSON-schema spec.
    #[test]
    fn keywords_hold_for_random_logits_and_many_seeds() {
        let index = Arc::new(VocabIndex::from_token_bytes(vocabulary()));
        let string = |v: &Value| v.as_str().unwrap().to_string();
        let number = |v: &Value| v.as_f64().unwrap();
        let is_date = |s: &str| {
            let b = s.as_bytes();
            let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
            let field = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
            b.len() == 10
                && digits(0..4)
                && b[4] == b'-'
                && digits(5..7)
                && b[7] == b'-'
                && digits(8..10)
                && (1..=12).contains(&field(5..7))
                && (1..=31).contains(&field(8..10))
        };
        type Check = Box<dyn Fn(&Value) -> bool>;
        let cases: Vec<(Value, Check)> = vec![
            (
                json!({"type": "string", "minLength": 3, "maxLength": 5}),
                Box::new(move |v| (3..=5).contains(&string(v).chars().count())),
            ),
            (
                json!({"type": "string", "maxLength": 0}),
                Box::new(move |v| string(v).is_empty()),
            ),
            (
                json!({"type": "string", "pattern": "^[a-c]{2}-[0-9]+$"}),
                Box::new(move |v| {
                    let s = string(v);
                    let (head, tail) = s.split_at(2.min(s.len()));
                    head.len() == 2
                        && head.bytes().all(|b| (b'a'..=b'c').contains(&b))
                        && tail.len() > 1
                        && tail.as_bytes()[0] == b'-'
                        && tail[1..].bytes().all(|b| b.is_ascii_digit())
                }),
            ),
            (
                // Unanchored: the string contains the match somewhere.
                json!({"type": "string", "pattern": "\\d\\d", "maxLength": 6}),
                Box::new(move |v| {
                    let s = string(v);
                    s.chars().count() <= 6
                        && s.as_bytes()
                            .windows(2)
                            .any(|w| w.iter().all(u8::is_ascii_digit))
                }),
            ),
            (
                json!({"type": "string", "format": "date"}),
                Box::new(move |v| is_date(&string(v))),
            ),
            (
                json!({"type": "string", "format": "date-time"}),
                Box::new(move |v| {
                    let s = string(v);
                    s.len() >= 20
                        && is_date(&s[..10])
                        && (s.ends_with('Z')
                            || s.ends_with('z')
                            || s[s.len() - 6..].starts_with(['+', '-']))
                }),
            ),
            (
                json!({"type": "string", "format": "email"}),
                Box::new(move |v| {
                    let s = string(v);
                    let (local, domain) = s.split_once('@').unwrap_or(("", ""));
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }),
            ),
            (
                json!({"type": "string", "format": "uuid"}),
                Box::new(move |v| {
                    let s = string(v);
                    s.len() == 36
                        && s.char_indices().all(|(i, c)| {
                            if [8, 13, 18, 23].contains(&i) {
                                c == '-'
                            } else {
                                c.is_ascii_hexdigit()
                            }
                        })
                }),
            ),
            (
                json!({"type": "integer", "minimum": -3, "maximum": 250}),
                Box::new(move |v| v.as_i64().is_some_and(|x| (-3..=250).contains(&x))),
            ),
            (
                json!({"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 13}),
                Box::new(move |v| v.as_i64().is_some_and(|x| x == 11 || x == 12)),
            ),
            (
                json!({"type": "integer", "minimum": 1000}),
                Box::new(move |v| v.as_i64().is_some_and(|x| x >= 1000)),
            ),
            (
                json!({"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}),
                Box::new(move |v| number(v) > 0.0 && number(v) <= 0.5),
            ),
            (
                json!({"type": "number", "minimum": -1.25, "exclusiveMaximum": -1}),
                Box::new(move |v| number(v) >= -1.25 && number(v) < -1.0),
            ),
            (
                json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 3}),
                Box::new(move |v| (2..=3).contains(&v.as_array().unwrap().len())),
            ),
        ];
        let mut rng = Rng::new(7);
        for (schema, check) in &cases {
            let mut ended = 0;
            for _ in 0..60 {
                if let Some(v) = sample_answer(schema, &index, &mut rng) {
                    assert!(check(&v), "{schema}: {v}");
                    ended += 1;
                }
            }
            assert!(ended >= 20, "{schema}: only {ended} of 60 answers ended");
        }
    }

    /// Several tool calls in one `anyOf`, told apart by `name`: the name written first picks
    /// the arguments schema, whichever tool the random logits lean to.
    #[test]
    fn the_name_written_first_picks_the_arguments_schema() {
        let call = |name: &str, arguments: Value| {
            json!({"type": "object",
                   "properties": {"name": {"const": name}, "arguments": arguments},
                   "required": ["name", "arguments"], "additionalProperties": false})
        };
        let schema = json!({"anyOf": [
            call("get_weather", json!({"type": "object", "properties": {"city": {"enum": ["Paris", "Lyon"]}}, "required": ["city"]})),
            call("add", json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})),
            call("ping", json!({"type": "object", "properties": {}, "additionalProperties": false})),
        ]});
        let compiled = JsonSchema::compile(&schema).unwrap();
        assert!(compiled
            .nodes
            .iter()
            .any(|n| matches!(n, Node::Tagged { .. })));
        assert!(accepts(
            &schema,
            r#"{"name": "add", "arguments": {"a": 1, "b": 2}}"#
        ));
        assert!(!accepts(
            &schema,
            r#"{"name": "add", "arguments": {"city": "Paris"}}"#
        ));
        assert!(!accepts(
            &schema,
            r#"{"arguments": {"a": 1, "b": 2}, "name": "add"}"#
        ));
        let index = Arc::new(VocabIndex::from_token_bytes(vocabulary()));
        let mut rng = Rng::new(11);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..120 {
            if let Some(v) = sample_answer(&schema, &index, &mut rng) {
                assert!(valid(&v, &schema), "{v}");
                names.insert(v["name"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(names.len(), 3, "{names:?}");
        // One tagged object in a union: its tag is written first too.
        let one = json!({"anyOf": [call("add", json!({"type": "object"}))]});
        assert!(accepts(&one, r#"{"name": "add", "arguments": {}}"#));
        assert!(!accepts(&one, r#"{"arguments": {}, "name": "add"}"#));
        // A union with no property to tell its objects apart is still refused.
        assert!(JsonSchema::compile(&json!({"anyOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"type": "object", "properties": {"b": {"type": "string"}}},
        ]}))
        .is_err());
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
