//! A streaming reader of OData collection responses: `{"value": [item, …], "@odata.nextLink": …}`
//! with any other members (`@odata.context`, `@odata.count`, …) in any order, the link before or
//! after `value`. It owns nothing but the byte-level format: it knows neither HTTP nor the alert
//! model, so every source that answers with an OData collection (the MDE alerts API, Microsoft
//! Graph `security/alerts_v2`) can use it.
//!
//! The contract, in three parts:
//! - bytes go in as they arrive ([`CollectionReader::feed`], any chunking);
//! - each item of `value` is handed to an [`ItemSink`] as soon as its last byte has arrived, as a
//!   borrowed [`RawValue`] holding its exact text; nothing else of the body is kept, so the
//!   reader holds at most one item (plus the next link) whatever the size of the body;
//! - [`CollectionReader::finish`] says how many items there were and the `@odata.nextLink`.
//!
//! Limits bound what a hostile or broken server can make us hold: a body longer than
//! [`Limits::max_body`] bytes or one item longer than [`Limits::max_item`] bytes is refused at the
//! byte that crosses the limit. Whitespace counts towards the body, so a body of endless blanks
//! ends there too, having cost no memory.

use serde_json::value::RawValue;

use crate::BoxFuture;

/// What the reader may hold and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one response body (after decompression).
    pub max_body: usize,
    /// Bytes of one item of `value`, and of the next link.
    pub max_item: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 256 << 20,
            max_item: 4 << 20,
        }
    }
}

/// The sink refused an item and the read must end (it keeps its own reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort;

/// Where the items of a collection go, one at a time, while the body is still arriving.
pub trait ItemSink: Send {
    /// A new attempt at reading a response begins (the first, or a retry after the previous
    /// attempt's body broke off): forget whatever describes the response being read. Items
    /// already handed over came from a real response and need not be taken back.
    fn begin(&mut self);

    /// One item, its exact JSON text. An `Err` ends the read with [`ReadError::Aborted`].
    fn item<'a>(&'a mut self, item: &'a RawValue) -> BoxFuture<'a, Result<(), Abort>>;
}

/// What a complete collection response said besides its items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub items: usize,
    pub next_link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the response body is longer than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("item {index} of the response is longer than {limit} bytes")]
    ItemTooLarge { limit: usize, index: usize },
    #[error("the response is not an OData collection: {0}")]
    Malformed(String),
    #[error("the response body ended before the collection did")]
    Truncated,
    /// A complete JSON object that is not a collection: no `value` member, or an `error` member
    /// (a gateway's or proxy's answer with a 200 status). Read as an empty page it would prove a
    /// window empty, so it is refused.
    #[error("the response is not a collection ({why}); it begins {head:?}")]
    NotACollection { why: &'static str, head: String },
    #[error("the reader of the response stopped")]
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// After `{` or a member's `,`: a key or `}`.
    Key,
    /// Inside a key's string.
    KeyText,
    /// After a key: `:`.
    Colon,
    /// After `:`: the member's value.
    Value,
    /// Inside a value we do not keep (any JSON value).
    Skip,
    /// Inside the next link's string.
    Link,
    /// After a member's value: `,` or `}`.
    AfterMember,
    /// After `[` of `value` or an item's `,`: an item or `]`.
    Item,
    /// Inside an item.
    ItemText,
    /// After an item: `,` or `]`.
    AfterItem,
    /// After the closing `}`: only whitespace may follow.
    Done,
}

/// Tracks where one JSON value ends, byte by byte, without parsing it.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A number or literal at depth 0: ends at the first delimiter.
    bare: bool,
    started: bool,
}

enum Step {
    /// The byte belongs to the value; more follow.
    More,
    /// The byte was the value's last.
    EndIncluding,
    /// The value ended just before this byte (a bare scalar followed by a delimiter).
    EndBefore,
}

impl Scan {
    fn step(&mut self, b: u8) -> Step {
        if !self.started {
            self.started = true;
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = 1,
                _ => self.bare = true,
            }
            return Step::More;
        }
        if self.bare {
            return match b {
                b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r' => Step::EndBefore,
                _ => Step::More,
            };
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 0 {
                    return Step::EndIncluding;
                }
            }
            return Step::More;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    return Step::EndIncluding;
                }
            }
            _ => {}
        }
        Step::More
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Longest member name we look at; longer ones cannot be `value` or `@odata.nextLink`.
const MAX_KEY: usize = 256;

/// The incremental reader of one response body. See the module documentation.
pub struct CollectionReader {
    limits: Limits,
    state: State,
    scan: Scan,
    /// The key being read (escapes kept as sent; the keys we want have none).
    key: Vec<u8>,
    key_overflow: bool,
    key_escaped: bool,
    /// The item (or link) being read.
    buf: Vec<u8>,
    /// Whether the member being read is `value` / `@odata.nextLink`.
    member: Member,
    body: usize,
    items: usize,
    next_link: Option<String>,
    /// Whether the body had a `value` member, and an `error` member.
    saw_value: bool,
    saw_error: bool,
    /// The body's first bytes, quoted when it is not a collection.
    head: Vec<u8>,
}

/// How many of a body's first bytes an error quotes.
const HEAD: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Value,
    Link,
    Other,
}

impl CollectionReader {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Start,
            scan: Scan::default(),
            key: Vec::new(),
            key_overflow: false,
            key_escaped: false,
            buf: Vec::new(),
            member: Member::Other,
            body: 0,
            items: 0,
            next_link: None,
            saw_value: false,
            saw_error: false,
            head: Vec::new(),
        }
    }

    fn malformed(&self, what: &str, b: u8) -> ReadError {
        ReadError::Malformed(format!(
            "{what}, found {:?} at byte {}",
            b as char, self.body
        ))
    }

    /// Reads the next bytes of the body, handing each item to `sink` as soon as it is complete.
    pub async fn feed(&mut self, chunk: &[u8], sink: &mut dyn ItemSink) -> Result<(), ReadError> {
        if self.body.saturating_add(chunk.len()) > self.limits.max_body {
            return Err(ReadError::BodyTooLarge {
                limit: self.limits.max_body,
            });
        }
        if self.head.len() < HEAD {
            let n = (HEAD - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
        }
        let mut i = 0;
        while i < chunk.len() {
            if self.advance(chunk, &mut i)? {
                let r = self.deliver(sink).await;
                self.buf.clear();
                // An item's buffer shrinks back after an unusually large item.
                if self.buf.capacity() > 1 << 20 {
                    self.buf.shrink_to(64 << 10);
                }
                r?;
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, sink: &mut dyn ItemSink) -> Result<(), ReadError> {
        let text = std::str::from_utf8(&self.buf)
            .map_err(|e| ReadError::Malformed(format!("item {} is not UTF-8: {e}", self.items)))?;
        let raw: &RawValue = serde_json::from_str(text)
            .map_err(|e| ReadError::Malformed(format!("item {} is not JSON: {e}", self.items)))?;
        self.items += 1;
        sink.item(raw).await.map_err(|Abort| ReadError::Aborted)
    }

    /// Consumes bytes of `chunk` from `*i` until an item is complete (`true`) or the chunk ends.
    fn advance(&mut self, chunk: &[u8], i: &mut usize) -> Result<bool, ReadError> {
        while *i < chunk.len() {
            let b = chunk[*i];
            match self.state {
                State::ItemText | State::Skip | State::Link => {
                    // the hot path: scan a run of bytes, copy it once
                    let start = *i;
                    let mut end: Option<usize> = None;
                    while *i < chunk.len() {
                        match self.scan.step(chunk[*i]) {
                            Step::More => *i += 1,
                            Step::EndIncluding => {
                                *i += 1;
                                end = Some(*i);
                                break;
                            }
                            Step::EndBefore => {
                                end = Some(*i);
                                break;
                            }
                        }
                    }
                    let stop = end.unwrap_or(*i);
                    self.body += stop - start;
                    if self.state != State::Skip {
                        let limit = self.limits.max_item;
                        if self.buf.len() + (stop - start) > limit {
                            return Err(ReadError::ItemTooLarge {
                                limit,
                                index: self.items,
                            });
                        }
                        self.buf.extend_from_slice(&chunk[start..stop]);
                    }
                    if end.is_some() {
                        self.scan = Scan::default();
                        match self.state {
                            State::ItemText => {
                                self.state = State::AfterItem;
                                return Ok(true);
                            }
                            State::Link => {
                                let link: String =
                                    serde_json::from_slice(&self.buf).map_err(|e| {
                                        ReadError::Malformed(format!("@odata.nextLink: {e}"))
                                    })?;
                                self.buf.clear();
                                self.next_link = Some(link);
                                self.state = State::AfterMember;
                            }
                            _ => self.state = State::AfterMember,
                        }
                    }
                    continue;
                }
                _ => {}
            }
            *i += 1;
            self.body += 1;
            if self.state != State::KeyText && is_ws(b) {
                continue;
            }
            match self.state {
                State::Start => {
                    if b != b'{' {
                        return Err(self.malformed("expected '{'", b));
                    }
                    self.state = State::Key;
                }
                State::Key => match b {
                    b'"' => {
                        self.key.clear();
                        self.key_overflow = false;
                        self.key_escaped = false;
                        self.state = State::KeyText;
                    }
                    b'}' => self.state = State::Done,
                    _ => return Err(self.malformed("expected a member name", b)),
                },
                State::KeyText => {
                    if self.key_escaped {
                        self.key_escaped = false;
                    } else if b == b'\\' {
                        self.key_escaped = true;
                    } else if b == b'"' {
                        self.member = match (self.key_overflow, self.key.as_slice()) {
                            (false, b"value") => Member::Value,
                            (false, b"@odata.nextLink") => Member::Link,
                            (false, b"error") => {
                                self.saw_error = true;
                                Member::Other
                            }
                            _ => Member::Other,
                        };
                        self.state = State::Colon;
                        continue;
                    }
                    if self.key.len() < MAX_KEY {
                        self.key.push(b);
                    } else {
                        self.key_overflow = true;
                    }
                }
                State::Colon => {
                    if b != b':' {
                        return Err(self.malformed("expected ':'", b));
                    }
                    self.state = State::Value;
                }
                State::Value => match self.member {
                    Member::Value => {
                        if b != b'[' {
                            return Err(self.malformed("\"value\" must be an array", b));
                        }
                        self.saw_value = true;
                        self.state = State::Item;
                    }
                    Member::Link if b == b'"' => {
                        self.buf.clear();
                        self.buf.push(b);
                        self.scan = Scan::default();
                        self.scan.step(b);
                        self.state = State::Link;
                    }
                    Member::Link if b == b'n' => {
                        // `null`: no link
                        self.scan = Scan::default();
                        self.scan.step(b);
                        self.state = State::Skip;
                    }
                    Member::Link => {
                        return Err(self.malformed("\"@odata.nextLink\" must be a string", b));
                    }
                    Member::Other => {
                        self.scan = Scan::default();
                        self.scan.step(b);
                        self.state = State::Skip;
                    }
                },
                State::AfterMember => match b {
                    b',' => self.state = State::Key,
                    b'}' => self.state = State::Done,
                    _ => return Err(self.malformed("expected ',' or '}'", b)),
                },
                State::Item => {
                    if b == b']' {
                        self.state = State::AfterMember;
                    } else {
                        self.buf.clear();
                        self.buf.push(b);
                        self.scan = Scan::default();
                        self.scan.step(b);
                        self.state = State::ItemText;
                    }
                }
                State::AfterItem => match b {
                    b',' => self.state = State::Item,
                    b']' => self.state = State::AfterMember,
                    _ => return Err(self.malformed("expected ',' or ']' after an item", b)),
                },
                State::Done => return Err(self.malformed("unexpected data after the body", b)),
                State::ItemText | State::Skip | State::Link => unreachable!("handled above"),
            }
        }
        Ok(false)
    }

    /// The body has ended: the collection must be complete.
    pub fn finish(self) -> Result<Summary, ReadError> {
        if self.state != State::Done {
            return Err(ReadError::Truncated);
        }
        let why = if self.saw_error {
            "it has an \"error\" member"
        } else if !self.saw_value {
            "it has no \"value\" member"
        } else {
            ""
        };
        if !why.is_empty() {
            return Err(ReadError::NotACollection {
                why,
                head: String::from_utf8_lossy(&self.head).into_owned(),
            });
        }
        Ok(Summary {
            items: self.items,
            next_link: self.next_link,
        })
    }
}

/// A sink that keeps every item: for small responses (a `$top=1` probe) and tests.
#[derive(Debug, Default)]
pub struct Collect(pub Vec<Box<RawValue>>);

impl ItemSink for Collect {
    fn begin(&mut self) {
        self.0.clear();
    }

    fn item<'a>(&'a mut self, item: &'a RawValue) -> BoxFuture<'a, Result<(), Abort>> {
        self.0.push(item.to_owned());
        Box::pin(async { Ok(()) })
    }
}

/// Reads a whole body given as one slice (tests, and callers that already hold the bytes).
pub async fn read_all(
    body: &[u8],
    limits: Limits,
    sink: &mut dyn ItemSink,
) -> Result<Summary, ReadError> {
    let mut r = CollectionReader::new(limits);
    r.feed(body, sink).await?;
    r.finish()
}

#[cfg(test)]
mod tests;
