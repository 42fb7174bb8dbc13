//! One deterministic JSON value that a JSON Schema accepts: what the mock puts
//! in tool-call arguments and structured outputs (`json_schema`).
//!
//! Covers what function parameters and structured outputs use in practice:
//! objects (`properties`, `required`), arrays (`items`, `prefixItems`,
//! `minItems`/`maxItems`), `string` (a few `format`s, `minLength`/`maxLength`),
//! `integer`/`number` (bounds, inclusive or exclusive), `boolean`, `null`,
//! `enum`, `const`, `anyOf`/`oneOf` (the first branch that is not `null`),
//! `allOf` (objects merged), type lists, and local `$ref`s (`#/$defs/...`,
//! `#/definitions/...`, `#`), recursive ones included. Not covered: `pattern`,
//! `multipleOf`, `uniqueItems` beyond one item, `not`, `if`/`then`.
//!
//! An object gets its `required` properties, or all its properties when the
//! schema has no `required` list (OpenAI's strict mode lists them all).

use serde_json::{json, Map, Value};

/// Below this depth the generator stops making optional things (array items
/// beyond `minItems`, non-null `anyOf` branches), so recursive schemas end.
const SHALLOW: usize = 6;
/// A hard stop for schemas that cannot end (a required property that refers
/// to its own object): `null`, which such a schema does not accept anyway.
const MAX_DEPTH: usize = 32;

/// A value `schema` accepts (within the limits in the module docs).
pub fn example(schema: &Value) -> Value {
    Generator { root: schema }.value(schema, 0)
}

struct Generator<'r> {
    root: &'r Value,
}

impl Generator<'_> {
    fn value(&self, schema: &Value, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        let Value::Object(s) = schema else {
            // `true`, `{}` or garbage: anything goes.
            return json!("mock");
        };
        if let Some(target) = s.get("$ref").and_then(Value::as_str).and_then(|r| self.resolve(r)) {
            return self.value(target, depth + 1);
        }
        if let Some(value) = s.get("const") {
            return value.clone();
        }
        if let Some(first) = s.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
            return first.clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branch) = s.get(key).and_then(Value::as_array).and_then(|b| pick(b, depth)) {
                return self.value(branch, depth + 1);
            }
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
            return self.all_of(s, parts, depth);
        }
        match type_of(s, depth) {
            Some("object") => self.object(s, depth),
            Some("array") => self.array(s, depth),
            Some("string") => string(s),
            Some("integer") => integer(s),
            Some("number") => number(s),
            Some("boolean") => json!(true),
            Some("null") => Value::Null,
            _ => json!("mock"),
        }
    }

    /// `#`, `#/$defs/X`, `#/definitions/X` or any other JSON pointer into the root.
    fn resolve(&self, reference: &str) -> Option<&Value> {
        reference.strip_prefix('#').and_then(|pointer| self.root.pointer(pointer))
    }

    fn object(&self, s: &Map<String, Value>, depth: usize) -> Value {
        let empty = Map::new();
        let properties = s.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let required: Option<Vec<&str>> =
            s.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect());
        let mut out = Map::new();
        for (key, sub) in properties {
            if required.as_ref().is_none_or(|r| r.contains(&key.as_str())) {
                out.insert(key.clone(), self.value(sub, depth + 1));
            }
        }
        // A required name with no schema of its own takes `additionalProperties`'.
        for key in required.iter().flatten() {
            if !out.contains_key(*key) {
                let value = match s.get("additionalProperties") {
                    Some(extra @ Value::Object(_)) => self.value(extra, depth + 1),
                    _ => json!("mock"),
                };
                out.insert((*key).to_owned(), value);
            }
        }
        Value::Object(out)
    }

    /// One item (or `minItems`), the `prefixItems` first; none beyond
    /// `minItems` once deep, so recursive lists end.
    fn array(&self, s: &Map<String, Value>, depth: usize) -> Value {
        let bound = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let (min, max) = (bound("minItems").unwrap_or(0), bound("maxItems").unwrap_or(usize::MAX));
        let prefix = s.get("prefixItems").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let wanted = if depth >= SHALLOW { min } else { min.max(1) };
        let count = wanted.max(prefix.len()).min(max).min(64);
        let rest = s.get("items");
        let items = (0..count).map(|i| match prefix.get(i).or(rest) {
            Some(item) => self.value(item, depth + 1),
            None => json!("mock"),
        });
        Value::Array(items.collect())
    }

    /// Each part's value (and the schema's own properties beside `allOf`);
    /// objects are merged, otherwise the first part wins.
    fn all_of(&self, s: &Map<String, Value>, parts: &[Value], depth: usize) -> Value {
        let mut own = s.clone();
        own.remove("allOf");
        let own = Value::Object(own);
        let own_part = own.get("properties").is_some().then_some(&own);
        let mut merged = Map::new();
        let mut first = None;
        for part in parts.iter().chain(own_part) {
            match self.value(part, depth + 1) {
                Value::Object(map) => merged.extend(map),
                other => {
                    first.get_or_insert(other);
                }
            }
        }
        match first {
            Some(value) if merged.is_empty() => value,
            _ => Value::Object(merged),
        }
    }
}

/// The first branch that is not `null`; `null` itself when deep enough and
/// on offer, so a recursive optional field ends the recursion.
fn pick(branches: &[Value], depth: usize) -> Option<&Value> {
    let is_null = |b: &&Value| b.get("type").and_then(Value::as_str) == Some("null");
    if depth >= SHALLOW {
        if let Some(null) = branches.iter().find(is_null) {
            return Some(null);
        }
    }
    branches.iter().find(|b| !is_null(b)).or_else(|| branches.first())
}

/// The schema's `type`: the first non-`null` of a list (`null` when deep and
/// allowed), else guessed from `properties` or `items`.
fn type_of(s: &Map<String, Value>, depth: usize) -> Option<&'static str> {
    match s.get("type") {
        Some(Value::String(t)) => Some(static_type(t)),
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            let null_ok = names.contains(&"null");
            match names.iter().find(|t| **t != "null") {
                Some(_) if depth >= SHALLOW && null_ok => Some("null"),
                Some(t) => Some(static_type(t)),
                None if null_ok => Some("null"),
                None => None,
            }
        }
        _ if s.contains_key("properties") || s.contains_key("additionalProperties") => Some("object"),
        _ if s.contains_key("items") || s.contains_key("prefixItems") => Some("array"),
        _ => None,
    }
}

fn static_type(t: &str) -> &'static str {
    match t {
        "object" => "object",
        "array" => "array",
        "string" => "string",
        "integer" => "integer",
        "number" => "number",
        "boolean" => "boolean",
        "null" => "null",
        _ => "",
    }
}

fn string(s: &Map<String, Value>) -> Value {
    let base = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => "2024-05-10T18:50:49Z",
        Some("date") => "2024-05-10",
        Some("time") => "18:50:49Z",
        Some("duration") => "P1D",
        Some("email") => "mock@example.com",
        Some("hostname") => "example.com",
        Some("ipv4") => "127.0.0.1",
        Some("ipv6") => "::1",
        Some("uri" | "url") => "https://example.com/",
        Some("uuid") => "00000000-0000-4000-8000-000000000000",
        _ => "mock",
    };
    let min = s.get("minLength").and_then(Value::as_u64).map_or(0, |n| usize::try_from(n).unwrap_or(0).min(4096));
    let max = s.get("maxLength").and_then(Value::as_u64).map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(0));
    let mut text: String = base.chars().take(max).collect();
    while text.chars().count() < min {
        text.push('x');
    }
    json!(text)
}

/// Inclusive integer bounds from `minimum`/`maximum` and their exclusive forms.
fn integer(s: &Map<String, Value>) -> Value {
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    let lo =
        f("minimum").map(f64::ceil).into_iter().chain(f("exclusiveMinimum").map(|x| x.floor() + 1.0)).reduce(f64::max);
    let hi =
        f("maximum").map(f64::floor).into_iter().chain(f("exclusiveMaximum").map(|x| x.ceil() - 1.0)).reduce(f64::min);
    let mut v = 1.0_f64;
    if let Some(lo) = lo {
        v = v.max(lo);
    }
    if let Some(hi) = hi {
        v = v.min(hi);
    }
    // Bounds are small in practice; an absurd one saturates.
    json!(v as i64)
}

fn number(s: &Map<String, Value>) -> Value {
    let f = |k: &str| s.get(k).and_then(Value::as_f64);
    let (min, xmin, max, xmax) = (f("minimum"), f("exclusiveMinimum"), f("maximum"), f("exclusiveMaximum"));
    let inside = |v: f64| {
        min.is_none_or(|m| v >= m)
            && xmin.is_none_or(|m| v > m)
            && max.is_none_or(|m| v <= m)
            && xmax.is_none_or(|m| v < m)
    };
    let lo = min.into_iter().chain(xmin).reduce(f64::max);
    let hi = max.into_iter().chain(xmax).reduce(f64::min);
    let v = match (lo, hi) {
        _ if inside(1.5) => 1.5,
        (Some(lo), Some(hi)) => (lo + hi) / 2.0,
        (Some(lo), None) => lo + 1.0,
        (None, Some(hi)) => hi - 1.0,
        (None, None) => 1.5,
    };
    json!(v)
}
