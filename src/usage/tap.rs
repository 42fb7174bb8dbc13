//! The usage tap: a body stream that passes the upstream's answer through as
//! it arrives and reads its token usage on the way: the `usage` object of a
//! JSON answer, the final usage chunk of a chat/completions stream, or the
//! `response.completed` event of a Responses stream. When keygate injected
//! `include_usage`, the tap rewrites events to take it out again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize as _;
use serde_json::Value;

use crate::store::Tokens;

/// A JSON answer larger than this is passed through unread.
const JSON_CAP: usize = 8 * 1024 * 1024;
/// Text kept for an estimate if the stream is cut short.
const TEXT_CAP: usize = 256 * 1024;

/// What the tap saw of an answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The upstream's own count, when it gave one.
    pub tokens: Option<Tokens>,
    /// Generated text seen in a stream (for an estimate).
    pub text: String,
    /// The body ended early: an error, or the client went away.
    pub cut_short: bool,
}

type Done = Box<dyn FnOnce(Observed) + Send>;

pub struct Tap<S> {
    inner: S,
    sse: bool,
    /// Take out the usage chunk and `"usage": null` keygate asked for.
    strip_usage: bool,
    /// Take out Azure's content-filter fields and filter-only chunks, for
    /// OpenAI clients of an Azure upstream.
    strip_azure: bool,
    pending: Vec<u8>,
    json: Vec<u8>,
    observed: Observed,
    on_done: Option<Done>,
    ended: bool,
}

impl<S> Tap<S> {
    pub fn new(inner: S, sse: bool, strip_usage: bool, strip_azure: bool, on_done: Done) -> Self {
        Self {
            inner,
            sse,
            strip_usage,
            strip_azure,
            pending: Vec::new(),
            json: Vec::new(),
            observed: Observed::default(),
            on_done: Some(on_done),
            ended: false,
        }
    }

    fn finish(&mut self, mut cut_short: bool) {
        if let Some(done) = self.on_done.take() {
            if !self.sse && !self.json.is_empty() {
                // The server may drop a body once its Content-Length is sent,
                // without polling it to the end: a whole document is complete.
                // Only `usage` is built; the rest of the document is skipped.
                #[derive(serde::Deserialize)]
                struct Document {
                    #[serde(default)]
                    usage: Option<Usage>,
                }
                if let Ok(document) = serde_json::from_slice::<Document>(&self.json) {
                    self.observed.tokens = document.usage.and_then(|u| u.tokens());
                    cut_short = false;
                }
            }
            self.observed.cut_short |= cut_short;
            done(std::mem::take(&mut self.observed));
        }
    }

    /// Takes the complete events out of `pending` and returns the bytes the
    /// client gets for them (when rewriting; otherwise ignored).
    fn drain_events(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + sep).collect();
            match self.observe_event(&event[..end]) {
                Action::Keep => out.extend_from_slice(&event),
                Action::Drop => {}
                Action::Replace(json) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&json);
                    out.extend_from_slice(&event[end..]);
                }
            }
        }
        out
    }

    fn observe_event(&mut self, event: &[u8]) -> Action {
        let Some(payload) = data_of(event) else { return Action::Keep };
        if !payload.starts_with('{') {
            return Action::Keep;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&payload) else { return Action::Keep };
        self.collect_text(&value);
        let no_choices = value["choices"].as_array().is_some_and(Vec::is_empty);
        if let Some(tokens) = tokens_from_usage(&value["usage"]) {
            self.observed.tokens = Some(tokens);
            if self.strip_usage && no_choices {
                return Action::Drop;
            }
        }
        // Azure's first chunk carries only prompt filter results.
        if self.strip_azure && no_choices && value.get("prompt_filter_results").is_some() {
            return Action::Drop;
        }
        if let Some(kind) = value["type"].as_str() {
            if matches!(kind, "response.completed" | "response.incomplete" | "response.failed") {
                if let Some(tokens) = tokens_from_usage(&value["response"]["usage"]) {
                    self.observed.tokens = Some(tokens);
                }
            }
        }
        let mut changed = false;
        if let Some(object) = value.as_object_mut() {
            if self.strip_usage && object.get("usage").is_some_and(Value::is_null) {
                object.remove("usage");
                changed = true;
            }
            if self.strip_azure {
                changed |= strip_azure_fields(object);
            }
        }
        if changed {
            serde_json::to_vec(&value).map_or(Action::Keep, Action::Replace)
        } else {
            Action::Keep
        }
    }

    fn collect_text(&mut self, value: &Value) {
        if self.observed.text.len() >= TEXT_CAP {
            return;
        }
        if let Some(choices) = value["choices"].as_array() {
            for choice in choices {
                if let Some(text) = choice["delta"]["content"].as_str().or_else(|| choice["text"].as_str()) {
                    self.observed.text.push_str(text);
                }
            }
        }
        if value["type"].as_str() == Some("response.output_text.delta") {
            if let Some(delta) = value["delta"].as_str() {
                self.observed.text.push_str(delta);
            }
        }
    }
}

enum Action {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// A whole JSON answer without Azure's fields (unchanged if it is not JSON).
fn rewrite_json(body: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else { return body.to_vec() };
    let changed = value.as_object_mut().is_some_and(strip_azure_fields);
    if changed {
        serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
    } else {
        body.to_vec()
    }
}

/// Removes Azure-only fields from a chat/completions object; says whether any went.
pub fn strip_azure_fields(object: &mut serde_json::Map<String, Value>) -> bool {
    let mut changed = object.remove("prompt_filter_results").is_some() | object.remove("prompt_annotations").is_some();
    if let Some(choices) = object.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices.iter_mut().filter_map(Value::as_object_mut) {
            for field in ["content_filter_results", "content_filter_offsets", "content_filter_raw"] {
                changed |= choice.remove(field).is_some();
            }
        }
    }
    changed
}

/// The end of the first complete event in `buf` and its separator's length.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The joined `data:` lines of an event.
fn data_of(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_owned()),
            }
        }
    }
    data
}

/// Tokens from a `usage` object: chat/completions/embeddings (`prompt_tokens`)
/// or Responses (`input_tokens`).
pub fn tokens_from_usage(usage: &Value) -> Option<Tokens> {
    Usage::deserialize(usage).ok().and_then(|u| u.tokens())
}

/// A `usage` object of either shape: Chat Completions and embeddings
/// (`prompt_tokens`...) or the Responses API (`input_tokens`...). Read
/// straight from the answer's bytes, without building a JSON tree.
#[derive(serde::Deserialize)]
struct Usage {
    prompt_tokens: Option<Count>,
    completion_tokens: Option<Count>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens: Option<Count>,
    output_tokens: Option<Count>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

#[derive(serde::Deserialize)]
struct Details {
    cached_tokens: Option<Count>,
    reasoning_tokens: Option<Count>,
}

/// A token count; anything but an integer (a provider's odd float, string or
/// object) counts as 0 rather than losing the whole usage object. Read by
/// hand: an untagged enum would copy every count into a buffer first, to try
/// one variant after the other (half of what reading an answer's usage cost).
struct Count(i64);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct AnyCount;

        impl<'de> Visitor<'de> for AnyCount {
            type Value = Count;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token count")
            }

            fn visit_i64<E>(self, n: i64) -> Result<Count, E> {
                Ok(Count(n))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
                Ok(Count(i64::try_from(n).unwrap_or(0)))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(0))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(0))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(0))
            }
        }

        deserializer.deserialize_any(AnyCount)
    }
}

impl Usage {
    fn tokens(&self) -> Option<Tokens> {
        let n = |c: &Option<Count>| c.as_ref().map_or(0, |c| c.0);
        let detail = |d: &Option<Details>, pick: fn(&Details) -> &Option<Count>| d.as_ref().map_or(0, |d| n(pick(d)));
        // The same four counts under the names of each shape.
        let (input, output, input_details, output_details) = if self.prompt_tokens.is_some() {
            (&self.prompt_tokens, &self.completion_tokens, &self.prompt_tokens_details, &self.completion_tokens_details)
        } else if self.input_tokens.is_some() {
            (&self.input_tokens, &self.output_tokens, &self.input_tokens_details, &self.output_tokens_details)
        } else {
            return None;
        };
        Some(Tokens {
            input: n(input),
            output: n(output),
            cached: detail(input_details, |d| &d.cached_tokens),
            reasoning: detail(output_details, |d| &d.reasoning_tokens),
        })
    }
}

impl<S, E> Stream for Tap<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if !this.sse {
                        let fits = this.json.len() + chunk.len() <= JSON_CAP;
                        if fits {
                            this.json.extend_from_slice(&chunk);
                        }
                        if !this.strip_azure {
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                        if !fits {
                            // Too large to rewrite: give up and pass the rest as it is.
                            this.strip_azure = false;
                            let mut held = std::mem::take(&mut this.json);
                            held.extend_from_slice(&chunk);
                            return Poll::Ready(Some(Ok(Bytes::from(held))));
                        }
                        continue;
                    }
                    this.pending.extend_from_slice(&chunk);
                    let rewritten = this.drain_events();
                    if !(this.strip_usage || this.strip_azure) {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    if !rewritten.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(rewritten))));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finish(true);
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    // A last event without its blank line still counts, and a
                    // rewriting tap still owes the client those bytes.
                    let tail = std::mem::take(&mut this.pending);
                    if !tail.is_empty() {
                        let _ = this.observe_event(&tail);
                    }
                    if !this.sse && this.strip_azure {
                        let rewritten = rewrite_json(&this.json);
                        this.finish(false);
                        return Poll::Ready(Some(Ok(Bytes::from(rewritten))));
                    }
                    this.finish(false);
                    if (this.strip_usage || this.strip_azure) && !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Bytes::from(tail))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl<S> Drop for Tap<S> {
    fn drop(&mut self) {
        // The client went away (or the server is stopping) mid-answer.
        self.finish(true);
    }
}
