//! A small, safe unpickler for plain data (protocols 0–5), made for PyTorch memory snapshots.
//!
//! It never executes code: opcodes that name a class or call something (`GLOBAL`, `STACK_GLOBAL`,
//! `REDUCE`, `BUILD`, `INST`, `OBJ`, `NEWOBJ*`, `EXT*`, `PERSID`, out-of-band buffers) are refused.
//!
//! Memoised objects stay shared: the memo holds reference-counted containers and `BINGET` hands
//! out another reference, never a copy (a 1 MB snapshot has ~300k memo references; copying them
//! is what makes generic unpicklers blow up on large dumps). Two shapes that dominate snapshots are
//! compacted the moment they are complete (when their parent consumes them): a stack frame dict
//! `{filename, line, name}` becomes an index into a frame table, and a list of such frames becomes
//! an index into a table of interned stacks. The memo sees the compacted form too, so a shared frame
//! list costs four bytes per frame once, however many entries refer to it. A trace-entry dict
//! (`{action, addr, size, ...}`) is converted to a typed [`TraceEntry`] as soon as it is complete,
//! so the tree of a GB-sized trace never exists at once.
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

use super::convert::{trace_from_items, trace_from_pairs};
use super::{Action, Frame, StackId, TraceEntry};

/// A decoded pickle value. Containers are shared (`Rc`), as the memo shares them.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits: little-endian two's complement bytes.
    BigInt(Rc<Vec<u8>>),
    Float(f64),
    Str(Rc<String>),
    Bytes(Rc<Vec<u8>>),
    List(Rc<RefCell<SeqCell>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<MapCell>>),
    /// A stack frame dict, compacted: index into [`Decoded::frames`].
    Frame(u32),
    /// A non-empty list of stack frames, compacted: index into [`Decoded::stacks`].
    Stack(u32),
    /// A trace-entry dict, converted: index into [`Decoded::traces`].
    Trace(u32),
}

/// No memo slot.
const NO_MEMO: u32 = u32::MAX;

#[derive(Debug)]
pub struct SeqCell {
    /// Memo slot holding this list (to replace it by the compacted form).
    memo: u32,
    pub state: Seq,
}

#[derive(Debug)]
pub enum Seq {
    Items(Vec<Value>),
    /// A list that so far holds only stack frames.
    Frames(Vec<u32>),
    Stack(u32),
}

#[derive(Debug)]
pub struct MapCell {
    memo: u32,
    pub state: Map,
}

#[derive(Debug)]
pub enum Map {
    Items(Vec<(Value, Value)>),
    Frame(u32),
    Trace(u32),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) | Value::Stack(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) | Value::Frame(_) | Value::Trace(_) => "dict",
        }
    }
    fn new_list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(RefCell::new(SeqCell {
            memo: NO_MEMO,
            state: Seq::Items(items),
        })))
    }
    fn new_dict(items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Rc::new(RefCell::new(MapCell {
            memo: NO_MEMO,
            state: Map::Items(items),
        })))
    }
}

/// The result of decoding: the root value plus the tables it refers to.
pub struct Decoded {
    pub root: Value,
    pub frames: Vec<Frame>,
    /// Interned stacks (frame indices in file order, innermost first); index 0 is the empty stack.
    pub stacks: Vec<Box<[u32]>>,
    /// Trace entries converted while decoding (each referenced once by a `Value::Trace`).
    pub traces: Vec<TraceEntry>,
    /// Interned strings (file names, function names, trace metadata).
    pub strings: HashMap<String, Arc<str>, FxBuild>,
    /// The memoised lists and dicts, emptied when this is dropped: keep it until `root` is no
    /// longer needed.
    pub cells: Cells,
}

/// Memoised lists and dicts. A hostile pickle can make one hold itself (`BINGET` of its own memo
/// slot, then `SETITEM`), a cycle that reference counting never frees; every cycle a pickle can
/// build passes through a memoised list or dict (the only containers that change after they are
/// made), so emptying them all on drop frees it.
pub struct Cells(Vec<Value>);

impl Drop for Cells {
    fn drop(&mut self) {
        let mut contents: Vec<Value> = Vec::new();
        for c in std::mem::take(&mut self.0) {
            match &c {
                Value::List(rc) => {
                    let old = std::mem::replace(&mut rc.borrow_mut().state, Seq::Items(Vec::new()));
                    if let Seq::Items(v) = old {
                        contents.extend(v);
                    }
                }
                Value::Dict(rc) => {
                    let old = std::mem::replace(&mut rc.borrow_mut().state, Map::Items(Vec::new()));
                    if let Map::Items(v) = old {
                        contents.extend(v.into_iter().flat_map(|(k, x)| [k, x]));
                    }
                }
                _ => {}
            }
            contents.push(c);
        }
        drop_values(contents);
    }
}

/// A decoding error with the byte offset where it happened.
#[derive(Debug)]
pub struct PickleError {
    pub offset: u64,
    pub msg: String,
}

type Res<T> = Result<T, PickleError>;

/// FxHash (rustc's hasher, from rustc-hash): fast for the small integer keys used in interning.
pub type FxBuild = rustc_hash::FxBuildHasher;

/// Buffered byte source that tracks the absolute offset.
struct Input<R: Read> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    base: u64,
    eof: bool,
}

const BUF_SIZE: usize = 1 << 20; // 1 MiB read buffer: large enough that refills are rare.

impl<R: Read> Input<R> {
    fn new(src: R) -> Self {
        Input {
            src,
            buf: vec![0; BUF_SIZE],
            pos: 0,
            end: 0,
            base: 0,
            eof: false,
        }
    }
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    fn err<T>(&self, msg: impl Into<String>) -> Res<T> {
        Err(PickleError {
            offset: self.offset(),
            msg: msg.into(),
        })
    }
    /// Ensures at least `n` (≤ BUF_SIZE) bytes are buffered, or fails as truncated.
    fn fill(&mut self, n: usize) -> Res<()> {
        if self.end - self.pos >= n {
            return Ok(());
        }
        self.buf.copy_within(self.pos..self.end, 0);
        self.base += self.pos as u64;
        self.end -= self.pos;
        self.pos = 0;
        while self.end < n && !self.eof {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.err(format!("read error: {e}")),
            }
        }
        if self.end < n {
            let at = self.base + self.end as u64;
            return Err(PickleError {
                offset: at,
                msg: "truncated: the file ends in the middle of the pickle".into(),
            });
        }
        Ok(())
    }
    #[inline(always)]
    fn byte(&mut self) -> Res<u8> {
        if self.pos < self.end {
            let b = self.buf[self.pos];
            self.pos += 1;
            return Ok(b);
        }
        self.fill(1)?;
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }
    #[inline]
    fn peek(&mut self) -> Res<u8> {
        if self.pos < self.end {
            return Ok(self.buf[self.pos]);
        }
        self.fill(1)?;
        Ok(self.buf[self.pos])
    }
    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
        if self.end - self.pos < N {
            self.fill(N)?;
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }
    /// Reads `n` bytes of payload; large payloads are read incrementally so that a bogus length
    /// in a corrupt file cannot make us allocate more than the file holds.
    fn bytes(&mut self, n: u64) -> Res<Vec<u8>> {
        if n <= (BUF_SIZE as u64) {
            let n = n as usize;
            self.fill(n)?;
            let v = self.buf[self.pos..self.pos + n].to_vec();
            self.pos += n;
            return Ok(v);
        }
        let mut v = Vec::new();
        let mut left = n;
        while left > 0 {
            let chunk = left.min(BUF_SIZE as u64) as usize;
            self.fill(chunk)?;
            v.extend_from_slice(&self.buf[self.pos..self.pos + chunk]);
            self.pos += chunk;
            left -= chunk as u64;
        }
        Ok(v)
    }
    /// A little-endian two's complement integer of `n` <= 8 bytes (LONG1 payload).
    #[inline]
    fn small(&mut self, n: usize) -> Res<Value> {
        self.fill(n)?;
        let bytes = &self.buf[self.pos..self.pos + n];
        let v = if n == 0 {
            0
        } else {
            let neg = bytes[n - 1] & 0x80 != 0;
            let mut b = if neg { [0xffu8; 8] } else { [0u8; 8] };
            b[..n].copy_from_slice(bytes);
            i64::from_le_bytes(b)
        };
        self.pos += n;
        Ok(Value::Int(v))
    }
    /// A text line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> Res<String> {
        let mut out = Vec::new();
        loop {
            let b = self.byte()?;
            if b == b'\n' {
                break;
            }
            out.push(b);
            if out.len() > 1 << 20 {
                return self.err("text argument longer than 1 MiB");
            }
        }
        String::from_utf8(out).or_else(|_| self.err("text argument is not UTF-8"))
    }
}

struct Machine<R: Read> {
    inp: Input<R>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Vec<Option<Value>>,
    frames: Vec<Frame>,
    frame_index: HashMap<(usize, i64, usize), u32, FxBuild>,
    strings: HashMap<String, Arc<str>, FxBuild>,
    stacks: Vec<Box<[u32]>>,
    stack_index: HashMap<Box<[u32]>, u32, FxBuild>,
    traces: Vec<TraceEntry>,
    /// Reused buffer of the frames fast path.
    scratch: Vec<u32>,
    /// Frame index per memo slot (`NO_MEMO` when the slot is not a frame): a dense copy of the
    /// memo's frames, 4 bytes a slot, so the frames fast path stays in cache.
    memo_frames: Vec<u32>,
    /// Take the trace-entry fast path ([`Machine::trace_run`]); off only to test it against the
    /// general path.
    fast: bool,
    /// Reused buffer of the trace-entry fast path: the new memo values.
    pending: Vec<Value>,
    /// Per memo slot, what its string is as a trace-entry key and action ([`Machine::slot_tag`]);
    /// `TAG_UNKNOWN` until looked at, reset whenever the slot is written.
    slot_tags: Vec<u8>,
    /// A value read in place by the fast path (kept here so that it can be borrowed).
    pending_value: Option<Value>,
    /// The last compile_context / user_metadata interned by the fast path.
    last_cc: Option<Arc<str>>,
    last_um: Option<Arc<str>>,
}

/// Decodes one pickle from `src`.
pub fn decode<R: Read>(src: R) -> Result<Decoded, PickleError> {
    decode_sized(src, 0)
}

/// Bytes of pickle per trace entry, at least (a snapshot entry with a stack takes 150–400); used
/// to reserve the trace table from the input size. Reserved but untouched memory costs no RSS.
const MIN_ENTRY_BYTES: u64 = 128;
/// Bytes of pickle per memo slot, at least (two slots per entry).
const MIN_MEMO_BYTES: u64 = 64;
/// Reservations are capped (entries / memo slots), so a wrong size hint cannot reserve much.
const MAX_RESERVE: u64 = 1 << 24;

/// [`decode`] with the expected size of the (uncompressed) pickle, to size tables up front.
pub fn decode_sized<R: Read>(src: R, size_hint: u64) -> Result<Decoded, PickleError> {
    decode_with(src, size_hint, true)
}

fn decode_with<R: Read>(src: R, size_hint: u64, fast: bool) -> Result<Decoded, PickleError> {
    let mut m = Machine {
        inp: Input::new(src),
        stack: Vec::with_capacity(64),
        marks: Vec::with_capacity(16),
        memo: Vec::new(),
        frames: Vec::new(),
        frame_index: HashMap::default(),
        strings: HashMap::default(),
        stacks: vec![Box::new([])],
        stack_index: HashMap::default(),
        traces: Vec::new(),
        scratch: Vec::new(),
        memo_frames: Vec::new(),
        fast,
        pending: Vec::new(),
        slot_tags: Vec::new(),
        pending_value: None,
        last_cc: None,
        last_um: None,
    };
    m.traces
        .reserve((size_hint / MIN_ENTRY_BYTES).min(MAX_RESERVE) as usize);
    m.memo
        .reserve((size_hint / MIN_MEMO_BYTES).min(MAX_RESERVE) as usize);
    let first = m.inp.byte().map_err(|_| PickleError {
        offset: 0,
        msg: "empty file".into(),
    })?;
    if first != 0x80 {
        return Err(PickleError {
            offset: 0,
            msg: format!(
                "not a pickle (first byte 0x{first:02x}; a snapshot starts with the PROTO opcode 0x80)"
            ),
        });
    }
    let proto = m.inp.byte()?;
    if !(2..=5).contains(&proto) {
        return m.inp.err(format!(
            "pickle protocol {proto} is not supported (snapshots use 2 to 5)"
        ));
    }
    let result = m.run();
    let memo = std::mem::take(&mut m.memo);
    let stack = std::mem::take(&mut m.stack);
    let cells = Cells(
        memo.iter()
            .flatten()
            .filter(|v| matches!(v, Value::List(_) | Value::Dict(_)))
            .cloned()
            .collect(),
    );
    // Only containers can hold a tree; the rest (mostly compacted entries) drops in place.
    drop_values(memo.into_iter().flatten().filter(is_container).chain(stack));
    let root = result?;
    Ok(Decoded {
        root,
        frames: m.frames,
        stacks: m.stacks,
        traces: m.traces,
        strings: m.strings,
        cells,
    })
}

/// True when dropping `v` cannot recurse (not a container, shared, or already compacted).
fn shallow(v: &Value) -> bool {
    match v {
        Value::List(rc) => {
            Rc::strong_count(rc) > 1
                || match &rc.borrow().state {
                    Seq::Items(i) => i.is_empty(),
                    _ => true,
                }
        }
        Value::Dict(rc) => {
            Rc::strong_count(rc) > 1
                || match &rc.borrow().state {
                    Map::Items(i) => i.is_empty(),
                    _ => true,
                }
        }
        Value::Tuple(rc) => Rc::strong_count(rc) > 1 || rc.iter().all(|v| !is_container(v)),
        _ => true,
    }
}

fn is_container(v: &Value) -> bool {
    matches!(v, Value::List(_) | Value::Dict(_) | Value::Tuple(_))
}

/// Drops a value tree without recursion (a hostile pickle can nest containers millions deep).
pub fn drop_values(values: impl IntoIterator<Item = Value>) {
    let mut work: Vec<Value> = Vec::new();
    for v in values {
        if shallow(&v) {
            drop(v);
        } else {
            work.push(v);
        }
    }
    while let Some(v) = work.pop() {
        let mut push = |c: Value| {
            if shallow(&c) {
                drop(c);
            } else {
                work.push(c);
            }
        };
        match v {
            Value::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    if let Seq::Items(items) = cell.into_inner().state {
                        items.into_iter().for_each(&mut push);
                    }
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    if let Map::Items(items) = cell.into_inner().state {
                        for (k, v) in items {
                            push(k);
                            push(v);
                        }
                    }
                }
            }
            Value::Tuple(rc) => {
                if let Ok(items) = Rc::try_unwrap(rc) {
                    items.into_iter().for_each(&mut push);
                }
            }
            _ => {}
        }
    }
}

// Opcode bytes (CPython Lib/pickle.py).
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

fn refused_name(b: u8) -> Option<&'static str> {
    Some(match b {
        op::GLOBAL => "GLOBAL",
        op::STACK_GLOBAL => "STACK_GLOBAL",
        op::REDUCE => "REDUCE",
        op::BUILD => "BUILD",
        op::INST => "INST",
        op::OBJ => "OBJ",
        op::NEWOBJ => "NEWOBJ",
        op::NEWOBJ_EX => "NEWOBJ_EX",
        op::EXT1 => "EXT1",
        op::EXT2 => "EXT2",
        op::EXT4 => "EXT4",
        op::PERSID => "PERSID",
        op::BINPERSID => "BINPERSID",
        op::NEXT_BUFFER => "NEXT_BUFFER",
        op::READONLY_BUFFER => "READONLY_BUFFER",
        _ => return None,
    })
}

fn bigint(bytes: Vec<u8>) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut b = if neg { [0xffu8; 8] } else { [0u8; 8] };
        b[..bytes.len()].copy_from_slice(&bytes);
        return Value::Int(i64::from_le_bytes(b));
    }
    Value::BigInt(Rc::new(bytes))
}

impl<R: Read> Machine<R> {
    fn pop(&mut self) -> Res<Value> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.inp.err("stack underflow (corrupt pickle)"),
        }
    }
    fn top(&mut self) -> Res<&Value> {
        match self.stack.last() {
            Some(v) => Ok(v),
            None => self.inp.err("stack underflow (corrupt pickle)"),
        }
    }
    fn pop_mark(&mut self) -> Res<usize> {
        match self.marks.pop() {
            Some(m) if m <= self.stack.len() => Ok(m),
            _ => self.inp.err("missing MARK (corrupt pickle)"),
        }
    }
    #[inline(always)]
    fn memo_get(&mut self, idx: usize) -> Res<()> {
        match self.memo.get(idx) {
            Some(Some(v)) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            _ => self.bad_memo(idx),
        }
    }
    #[cold]
    fn bad_memo(&self, idx: usize) -> Res<()> {
        self.inp
            .err(format!("memo reference {idx} to nothing (corrupt pickle)"))
    }

    /// Fast path for the commonest shape in a snapshot: a frames list made of memo references,
    /// `EMPTY_LIST MEMOIZE MARK (BINGET|LONG_BINGET)* APPENDS`. Called at MARK; collects frame
    /// indices without putting them on the stack. Returns false when the shape does not apply (the
    /// MARK is then handled normally); on any other opcode it falls back to the general path with
    /// the same effect.
    fn frames_run(&mut self) -> Res<bool> {
        match self.stack.last() {
            Some(Value::List(rc)) => match &rc.borrow().state {
                Seq::Items(v) if v.is_empty() => {}
                Seq::Frames(_) => {}
                _ => return Ok(false),
            },
            _ => return Ok(false),
        }
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        let mut other: Option<Value> = None;
        loop {
            // Tight scan over what is buffered: memo references to frames.
            {
                let (buf, end, mf) = (&self.inp.buf, self.inp.end, &self.memo_frames);
                let mut p = self.inp.pos;
                while p + 5 <= end {
                    let (idx, len) = match buf[p] {
                        op::BINGET => (buf[p + 1] as usize, 2),
                        op::LONG_BINGET => (
                            u32::from_le_bytes([buf[p + 1], buf[p + 2], buf[p + 3], buf[p + 4]])
                                as usize,
                            5,
                        ),
                        _ => break,
                    };
                    match mf.get(idx) {
                        Some(&f) if f != NO_MEMO => {
                            ids.push(f);
                            p += len;
                        }
                        _ => break,
                    }
                }
                self.inp.pos = p;
            }
            let idx = match self.inp.peek()? {
                op::BINGET => {
                    let [_, i] = self.inp.array::<2>()?;
                    i as usize
                }
                op::LONG_BINGET => {
                    let [_, a, b, c, d] = self.inp.array::<5>()?;
                    u32::from_le_bytes([a, b, c, d]) as usize
                }
                op::APPENDS => {
                    self.inp.pos += 1;
                    if let Some(Value::List(rc)) = self.stack.last() {
                        let rc = rc.clone();
                        let mut b = rc.borrow_mut();
                        match &mut b.state {
                            Seq::Frames(v) => v.extend_from_slice(&ids),
                            _ if ids.is_empty() => {}
                            st => {
                                // Interned now (one APPENDS holds a whole list of < 1000 items);
                                // a further APPENDS un-interns it (see `append_from`).
                                let id = self.intern_stack(&ids);
                                *st = Seq::Stack(id);
                                let slot = b.memo;
                                drop(b);
                                if slot != NO_MEMO {
                                    self.set_memo(slot, Value::Stack(id));
                                }
                            }
                        }
                    }
                    self.scratch = ids;
                    return Ok(true);
                }
                _ => break,
            };
            if let Some(&f) = self.memo_frames.get(idx) {
                if f != NO_MEMO {
                    ids.push(f);
                    continue;
                }
            }
            match self.memo.get(idx) {
                Some(Some(Value::Frame(f))) => ids.push(*f),
                Some(Some(v)) => {
                    other = Some(v.clone());
                    break;
                }
                _ => return self.bad_memo(idx).map(|_| true),
            }
        }
        // Not the fast shape after all: continue as the general path would have.
        self.marks.push(self.stack.len());
        self.stack.extend(ids.iter().map(|&f| Value::Frame(f)));
        if let Some(v) = other {
            self.stack.push(v);
        }
        self.scratch = ids;
        Ok(true)
    }
    /// Fast path for the bulk of a snapshot: a trace-entry dict written in one piece,
    /// `EMPTY_DICT [memo] MARK (key value [memo])* SETITEMS`, whose keys are memo references to
    /// strings and whose values are ints, strings, `None`, memo references to those, or a frames
    /// list `EMPTY_LIST [memo] [MARK (BINGET|LONG_BINGET)* APPENDS]` of memoised frames. Called
    /// after EMPTY_DICT. It reads the buffered bytes straight into a [`TraceEntry`] without
    /// touching the stack or the memo, and commits (the entry, its memo slots, `Value::Trace` on
    /// the stack) only once the whole dict has been read. It returns false, having changed
    /// nothing the general path can see, when anything differs (another opcode or value type, a
    /// dict that is not a trace entry, the dict running past the buffer): the general path then
    /// decodes the dict from its start, with the result this path would have given.
    fn trace_run(&mut self) -> bool {
        let mut pending = std::mem::take(&mut self.pending);
        let mut ids = std::mem::take(&mut self.scratch);
        pending.clear();
        let done = match self.trace_scan(&mut pending, &mut ids) {
            Some((len, dict_memo, te)) => {
                let id = self.traces.len() as u32;
                self.traces.push(te);
                if dict_memo {
                    pending[0] = Value::Trace(id);
                }
                self.memo.extend(pending.drain(..).map(Some));
                self.inp.pos += len;
                self.stack.push(Value::Trace(id));
                true
            }
            None => false,
        };
        pending.clear();
        self.pending = pending;
        self.pending_value = None;
        self.scratch = ids;
        done
    }

    /// What the memo string in `slot` is as a trace-entry key and as an action (cached per slot).
    #[inline(always)]
    fn slot_tag(&mut self, slot: usize) -> u8 {
        if let Some(&t) = self.slot_tags.get(slot) {
            if t != TAG_UNKNOWN {
                return t;
            }
        }
        let t = match self.memo.get(slot) {
            Some(Some(Value::Str(s))) => {
                let key = Key::parse(s) as u8;
                (key + 1) | ((Action::parse(s) as u8) << 4)
            }
            Some(Some(_)) => TAG_NOT_STR,
            // Not written yet: not cached.
            _ => return TAG_NOT_STR,
        };
        if slot < MAX_TAGGED_SLOT {
            if self.slot_tags.len() <= slot {
                self.slot_tags.resize(slot + 1, TAG_UNKNOWN);
            }
            self.slot_tags[slot] = t;
        }
        t
    }

    /// The reading half of [`Machine::trace_run`]: returns the bytes read, whether the dict is
    /// memoised and the entry, and fills `pending` with the new memo values (the dict's own slot
    /// first, as a placeholder, when it has one). Its only side effects are interning the frames
    /// lists and the interned strings, which the general path would intern identically.
    fn trace_scan(
        &mut self,
        pending: &mut Vec<Value>,
        ids: &mut Vec<u32>,
    ) -> Option<(usize, bool, TraceEntry)> {
        let (start, end) = (self.inp.pos, self.inp.end);
        let base = self.memo.len();
        let mut p = start;
        let dict_memo = memo_op(&self.inp.buf[..end], &mut p, base)?;
        if dict_memo {
            pending.push(Value::None);
        }
        if *self.inp.buf[..end].get(p)? != op::MARK {
            return None;
        }
        p += 1;
        let mut action = None;
        let mut addr = 0u64;
        let mut size = None;
        let mut stream = 0i64;
        let mut time_us = None;
        let mut device_free = None;
        let mut frames = StackId(0);
        let mut compile_context = None;
        let mut user_metadata = None;
        loop {
            let buf = &self.inp.buf[..end];
            let slot = match *buf.get(p)? {
                op::BINGET => {
                    p += 2;
                    *buf.get(p - 1)? as usize
                }
                op::LONG_BINGET => {
                    p += 5;
                    le32(buf, p - 4)? as usize
                }
                op::SETITEMS => {
                    p += 1;
                    break;
                }
                _ => return None,
            };
            let tag = self.slot_tag(slot);
            if tag == TAG_NOT_STR {
                return None;
            }
            let buf = &self.inp.buf[..end];
            match Key::from_tag(tag) {
                Key::Action => match *buf.get(p)? {
                    op::BINGET | op::LONG_BINGET => {
                        let s = if buf[p] == op::BINGET {
                            p += 2;
                            *buf.get(p - 1)? as usize
                        } else {
                            p += 5;
                            le32(buf, p - 4)? as usize
                        };
                        let t = self.slot_tag(s);
                        if t == TAG_NOT_STR {
                            return None;
                        }
                        action = Some(ACTIONS[(t >> 4) as usize]);
                        if memo_op(&self.inp.buf[..end], &mut p, base + pending.len())? {
                            return None;
                        }
                    }
                    _ => {
                        let v = scalar(buf, &mut p, &self.memo)?;
                        let Value::Str(s) = &v else { return None };
                        action = Some(Action::parse(s));
                        if memo_op(buf, &mut p, base + pending.len())? {
                            pending.push(v);
                        }
                    }
                },
                k @ (Key::Addr | Key::Size | Key::Stream | Key::TimeUs | Key::DeviceFree) => {
                    let v = match (*buf.get(p)?, k) {
                        (op::NONE, Key::TimeUs) => {
                            p += 1;
                            None
                        }
                        _ => Some(int_at(buf, &mut p)?),
                    };
                    if memo_op(buf, &mut p, base + pending.len())? {
                        pending.push(v.map_or(Value::None, Value::Int));
                    }
                    match (k, v) {
                        (Key::TimeUs, v) => time_us = v.or(time_us),
                        (Key::Stream, Some(v)) => stream = v,
                        (_, Some(v)) => {
                            let v = u64::try_from(v).ok()?;
                            match k {
                                Key::Addr => addr = v,
                                Key::Size => size = Some(v),
                                _ => device_free = Some(v),
                            }
                        }
                        _ => return None,
                    }
                }
                Key::Frames => {
                    frames = match *buf.get(p)? {
                        op::EMPTY_LIST => self.frames_list(&mut p, end, base, pending, ids)?,
                        _ => {
                            let v = scalar(buf, &mut p, &self.memo)?;
                            let f = match &v {
                                Value::None => StackId(0),
                                Value::Stack(id) => StackId(*id),
                                _ => return None,
                            };
                            if memo_op(buf, &mut p, base + pending.len())? {
                                pending.push(v);
                            }
                            f
                        }
                    };
                }
                k => {
                    // A memo reference is read in place (no clone unless memoised again).
                    let slot = match *buf.get(p)? {
                        op::BINGET => Some((*buf.get(p + 1)? as usize, 2)),
                        op::LONG_BINGET => Some((le32(buf, p + 1)? as usize, 5)),
                        _ => None,
                    };
                    let (v, len) = match slot {
                        Some((slot, len)) => match self.memo.get(slot) {
                            Some(Some(v)) if !is_container(v) => (v, len),
                            _ => return None,
                        },
                        None => {
                            let mut q = p;
                            let v = scalar(buf, &mut q, &self.memo)?;
                            let len = q - p;
                            self.pending_value = Some(v);
                            (self.pending_value.as_ref()?, len)
                        }
                    };
                    p += len;
                    if let (Key::CompileContext | Key::UserMetadata, Value::Str(s)) = (k, v) {
                        let last = if k == Key::CompileContext {
                            &mut self.last_cc
                        } else {
                            &mut self.last_um
                        };
                        // Consecutive entries usually carry the same text: skip the hash lookup.
                        let a = match last {
                            Some(a) if **a == ***s => a.clone(),
                            _ => {
                                let a = intern(&mut self.strings, s);
                                *last = Some(a.clone());
                                a
                            }
                        };
                        if k == Key::CompileContext {
                            compile_context = Some(a);
                        } else {
                            user_metadata = Some(a);
                        }
                    }
                    if memo_op(&self.inp.buf[..end], &mut p, base + pending.len())? {
                        let v = match self.pending_value.take() {
                            Some(v) if slot.is_none() => v,
                            _ => match slot.and_then(|(s, _)| self.memo.get(s)) {
                                Some(Some(v)) => v.clone(),
                                _ => return None,
                            },
                        };
                        pending.push(v);
                    }
                    self.pending_value = None;
                }
            }
        }
        let te = TraceEntry {
            action: action?,
            addr,
            size: size?,
            stream,
            time_us,
            device_free,
            frames,
            compile_context,
            user_metadata,
        };
        Some((p - start, dict_memo, te))
    }

    /// A frames list in the trace-entry fast path, from its EMPTY_LIST at `p`.
    fn frames_list(
        &mut self,
        p: &mut usize,
        end: usize,
        base: usize,
        pending: &mut Vec<Value>,
        ids: &mut Vec<u32>,
    ) -> Option<StackId> {
        let buf = &self.inp.buf[..end];
        *p += 1;
        let slot = base + pending.len();
        let list_memo = memo_op(buf, p, slot)?;
        if list_memo {
            pending.push(Value::None);
        }
        ids.clear();
        if *buf.get(*p)? == op::MARK {
            *p += 1;
            let mf = &self.memo_frames[..];
            loop {
                let (idx, len) = match *buf.get(*p)? {
                    op::BINGET => (*buf.get(*p + 1)? as usize, 2),
                    op::LONG_BINGET => (le32(buf, *p + 1)? as usize, 5),
                    op::APPENDS => {
                        *p += 1;
                        break;
                    }
                    _ => return None,
                };
                match mf.get(idx) {
                    Some(&f) if f != NO_MEMO => ids.push(f),
                    _ => return None,
                }
                *p += len;
            }
        }
        // More items for the list, or a memo opcode after it: left to the general path.
        if matches!(
            *buf.get(*p)?,
            op::MARK | op::APPEND | op::MEMOIZE | op::BINPUT | op::LONG_BINPUT
        ) {
            return None;
        }
        let (v, id) = if ids.is_empty() {
            let l = Value::new_list(Vec::new());
            if let (true, Value::List(rc)) = (list_memo, &l) {
                rc.borrow_mut().memo = slot as u32;
            }
            (l, 0)
        } else {
            let id = intern_stack(&mut self.stacks, &mut self.stack_index, ids);
            (Value::Stack(id), id)
        };
        if list_memo {
            pending[slot - base] = v;
        }
        Some(StackId(id))
    }

    fn memo_put(&mut self, idx: usize) -> Res<()> {
        let v = self.top()?.clone();
        if idx > self.memo.len() + (1 << 24) || idx >= NO_MEMO as usize {
            return self.inp.err(format!("memo index {idx} out of range"));
        }
        match &v {
            Value::List(rc) => rc.borrow_mut().memo = idx as u32,
            Value::Dict(rc) => rc.borrow_mut().memo = idx as u32,
            _ => {}
        }
        if let Some(t) = self.slot_tags.get_mut(idx) {
            *t = TAG_UNKNOWN;
        }
        if let Some(f) = self.memo_frames.get_mut(idx) {
            *f = match v {
                Value::Frame(id) => id,
                _ => NO_MEMO,
            };
        }
        if idx == self.memo.len() {
            self.memo.push(Some(v));
        } else {
            if idx > self.memo.len() {
                self.memo.resize(idx + 1, None);
            }
            self.memo[idx] = Some(v);
        }
        Ok(())
    }
    fn push_str(&mut self, bytes: Vec<u8>) -> Res<()> {
        match String::from_utf8(bytes) {
            Ok(s) => {
                self.stack.push(Value::Str(Rc::new(s)));
                Ok(())
            }
            Err(_) => self.inp.err("string is not valid UTF-8"),
        }
    }

    fn intern_str(&mut self, s: &str) -> Arc<str> {
        intern(&mut self.strings, s)
    }

    fn set_memo(&mut self, slot: u32, v: Value) {
        if let Some(t) = self.slot_tags.get_mut(slot as usize) {
            *t = TAG_UNKNOWN;
        }
        if let Some(m) = self.memo.get_mut(slot as usize) {
            if let Value::Frame(f) = v {
                let i = slot as usize;
                if self.memo_frames.len() <= i {
                    self.memo_frames.resize(i + 1, NO_MEMO);
                }
                self.memo_frames[i] = f;
            }
            *m = Some(v);
        }
    }

    /// Compacts a complete value as its parent consumes it (see the module docs).
    fn finish(&mut self, v: Value) -> Value {
        match &v {
            Value::Dict(rc) => {
                let rc = rc.clone();
                let (slot, compact) = {
                    let b = rc.borrow();
                    match &b.state {
                        Map::Frame(id) => return Value::Frame(*id),
                        Map::Trace(id) => return Value::Trace(*id),
                        Map::Items(items) => {
                            let c = if let Some(f) = self.frame_of(items) {
                                Some((Map::Frame(f), Value::Frame(f)))
                            } else if is_trace_entry(items.iter().map(|(k, v)| (k, v))) {
                                match trace_from_items(items, &mut self.strings) {
                                    Ok(te) => {
                                        let id = self.traces.len() as u32;
                                        self.traces.push(te);
                                        Some((Map::Trace(id), Value::Trace(id)))
                                    }
                                    // Left as a dict: the conversion reports it with its path.
                                    Err(_) => None,
                                }
                            } else {
                                None
                            };
                            (b.memo, c)
                        }
                    }
                };
                match compact {
                    Some((state, value)) => {
                        rc.borrow_mut().state = state;
                        drop(v);
                        drop(rc);
                        if slot != NO_MEMO {
                            self.set_memo(slot, value.clone());
                        }
                        value
                    }
                    None => v,
                }
            }
            Value::List(rc) => {
                let rc = rc.clone();
                let (slot, ids) = {
                    let mut b = rc.borrow_mut();
                    let slot = b.memo;
                    match &mut b.state {
                        Seq::Stack(id) => return Value::Stack(*id),
                        Seq::Frames(ids) => (slot, std::mem::take(ids)),
                        Seq::Items(items) => {
                            if items.is_empty()
                                || !items.iter().all(|i| matches!(i, Value::Frame(_)))
                            {
                                return v;
                            }
                            let ids = items
                                .iter()
                                .map(|i| match i {
                                    Value::Frame(f) => *f,
                                    _ => 0,
                                })
                                .collect();
                            (slot, ids)
                        }
                    }
                };
                let id = self.intern_stack(&ids);
                rc.borrow_mut().state = Seq::Stack(id);
                drop(v);
                drop(rc);
                if slot != NO_MEMO {
                    self.set_memo(slot, Value::Stack(id));
                }
                Value::Stack(id)
            }
            _ => v,
        }
    }

    fn intern_stack(&mut self, ids: &[u32]) -> u32 {
        intern_stack(&mut self.stacks, &mut self.stack_index, ids)
    }

    /// If `items` is a stack-frame dict, interns it and returns its index.
    fn frame_of(&mut self, items: &[(Value, Value)]) -> Option<u32> {
        if items.len() < 3 {
            return None;
        }
        let (mut filename, mut line, mut name) = (None, None, None);
        for (k, v) in items {
            let Value::Str(k) = k else { return None };
            match (k.as_str(), v) {
                ("filename", Value::Str(s)) => filename = Some(s.clone()),
                ("name", Value::Str(s)) => name = Some(s.clone()),
                ("line", Value::Int(i)) => line = Some(*i),
                // 2.14 FX annotations (`augment_with_fx_traces`): not used here.
                ("fx_node_op" | "fx_node_name" | "fx_original_trace", _) => {}
                _ => return None,
            }
        }
        let (filename, line, name) = (filename?, line?, name?);
        let filename = self.intern_str(&filename);
        let name = self.intern_str(&name);
        let key = (
            Arc::as_ptr(&filename) as *const u8 as usize,
            line,
            Arc::as_ptr(&name) as *const u8 as usize,
        );
        if let Some(id) = self.frame_index.get(&key) {
            return Some(*id);
        }
        let id = self.frames.len() as u32;
        self.frames.push(Frame {
            filename,
            line,
            name,
        });
        self.frame_index.insert(key, id);
        Some(id)
    }

    /// Finishes the values on the stack from `at` in place.
    fn finish_from(&mut self, at: usize) {
        for i in at..self.stack.len() {
            if is_container(&self.stack[i]) {
                let v = std::mem::replace(&mut self.stack[i], Value::None);
                self.stack[i] = self.finish(v);
            }
        }
    }

    /// APPEND/APPENDS: moves the stack items from `at` into the list just below them.
    fn append_from(&mut self, at: usize) -> Res<()> {
        if at == 0 {
            return self.inp.err("APPEND without a list (corrupt pickle)");
        }
        self.finish_from(at);
        let Value::List(rc) = &self.stack[at - 1] else {
            let t = self.stack[at - 1].type_name();
            return self.inp.err(format!("APPEND to a {t} (corrupt pickle)"));
        };
        let rc = rc.clone();
        let mut b = rc.borrow_mut();
        if let Seq::Stack(id) = b.state {
            // More items for a list interned at its first APPENDS: back to a growing list, and the
            // memo slot back to the list itself.
            let ids = self
                .stacks
                .get(id as usize)
                .map(|s| s.to_vec())
                .unwrap_or_default();
            b.state = Seq::Frames(ids);
            let slot = b.memo;
            if slot != NO_MEMO {
                self.set_memo(slot, Value::List(rc.clone()));
            }
        }
        let new = &self.stack[at..];
        let all_frames = new.iter().all(|v| matches!(v, Value::Frame(_)));
        match &mut b.state {
            Seq::Items(items) if items.is_empty() && all_frames && !new.is_empty() => {
                let ids = new
                    .iter()
                    .map(|v| match v {
                        Value::Frame(f) => *f,
                        _ => 0,
                    })
                    .collect();
                b.state = Seq::Frames(ids);
                self.stack.truncate(at);
            }
            Seq::Frames(ids) if all_frames => {
                ids.extend(new.iter().map(|v| match v {
                    Value::Frame(f) => *f,
                    _ => 0,
                }));
                self.stack.truncate(at);
            }
            Seq::Frames(ids) => {
                let mut items: Vec<Value> = ids.iter().map(|&f| Value::Frame(f)).collect();
                items.extend(self.stack.drain(at..));
                b.state = Seq::Items(items);
            }
            Seq::Items(items) => items.extend(self.stack.drain(at..)),
            Seq::Stack(_) => {
                drop(b);
                return self
                    .inp
                    .err("APPEND to a complete list (unsupported pickle)");
            }
        }
        Ok(())
    }

    /// SETITEM/SETITEMS: moves key/value pairs from `at` into the dict just below them.
    fn setitems_from(&mut self, at: usize) -> Res<()> {
        if at == 0 {
            return self.inp.err("SETITEM without a dict (corrupt pickle)");
        }
        if (self.stack.len() - at) % 2 != 0 {
            return self
                .inp
                .err("odd number of items for a dict (corrupt pickle)");
        }
        self.finish_from(at);
        let Value::Dict(rc) = &self.stack[at - 1] else {
            let t = self.stack[at - 1].type_name();
            return self.inp.err(format!("SETITEM on a {t} (corrupt pickle)"));
        };
        let rc = rc.clone();
        let mut b = rc.borrow_mut();
        // A whole trace entry in one SETITEMS: convert it straight from the stack.
        if matches!(&b.state, Map::Items(i) if i.is_empty()) {
            let flat = &self.stack[at..];
            let pairs = || flat.chunks_exact(2).map(|c| (&c[0], &c[1]));
            if is_trace_entry(pairs()) {
                if let Ok(te) = trace_from_pairs(pairs(), &mut self.strings) {
                    let id = self.traces.len() as u32;
                    self.traces.push(te);
                    b.state = Map::Trace(id);
                    let slot = b.memo;
                    drop(b);
                    if slot != NO_MEMO {
                        self.set_memo(slot, Value::Trace(id));
                    }
                    self.stack.truncate(at);
                    return Ok(());
                }
            }
        }
        match &mut b.state {
            Map::Items(items) => {
                items.reserve((self.stack.len() - at) / 2);
                let mut it = self.stack.drain(at..);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    items.push((k, v));
                }
                Ok(())
            }
            _ => {
                drop(b);
                self.inp
                    .err("SETITEM on a dict that was already complete (unsupported pickle)")
            }
        }
    }

    fn take_from(&mut self, at: usize) -> Vec<Value> {
        self.finish_from(at);
        self.stack.drain(at..).collect()
    }

    fn run(&mut self) -> Res<Value> {
        loop {
            let code = self.inp.byte()?;
            match code {
                op::BINGET => {
                    let i = self.inp.byte()? as usize;
                    self.memo_get(i)?;
                }
                op::LONG_BINGET => {
                    let i = u32::from_le_bytes(self.inp.array()?) as usize;
                    self.memo_get(i)?;
                }
                op::STOP => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                op::MEMOIZE => {
                    let n = self.memo.len();
                    self.memo_put(n)?;
                }
                op::BINPUT => {
                    let i = self.inp.byte()? as usize;
                    self.memo_put(i)?;
                }
                op::LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.inp.array()?) as usize;
                    self.memo_put(i)?;
                }
                op::PUT => {
                    let l = self.inp.line()?;
                    let i: usize = match l.trim().parse() {
                        Ok(i) => i,
                        Err(_) => return self.inp.err("bad PUT index"),
                    };
                    self.memo_put(i)?;
                }
                op::GET => {
                    let l = self.inp.line()?;
                    let i: usize = match l.trim().parse() {
                        Ok(i) => i,
                        Err(_) => return self.inp.err("bad GET index"),
                    };
                    self.memo_get(i)?;
                }
                op::MARK => {
                    if !self.frames_run()? {
                        self.marks.push(self.stack.len());
                    }
                }
                op::FRAME => {
                    let _ = self.inp.array::<8>()?;
                }
                op::PROTO => {
                    let _ = self.inp.byte()?;
                }
                op::EMPTY_DICT => {
                    if !(self.fast && self.trace_run()) {
                        self.stack.push(Value::new_dict(Vec::new()));
                    }
                }
                op::EMPTY_LIST | op::EMPTY_SET => self.stack.push(Value::new_list(Vec::new())),
                op::EMPTY_TUPLE => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                op::SHORT_BINUNICODE => {
                    let n = self.inp.byte()? as u64;
                    let b = self.inp.bytes(n)?;
                    self.push_str(b)?;
                }
                op::BINUNICODE => {
                    let n = u32::from_le_bytes(self.inp.array()?) as u64;
                    let b = self.inp.bytes(n)?;
                    self.push_str(b)?;
                }
                op::BINUNICODE8 => {
                    let n = u64::from_le_bytes(self.inp.array()?);
                    let b = self.inp.bytes(n)?;
                    self.push_str(b)?;
                }
                op::UNICODE => {
                    // Protocol 0 raw-unicode-escape; snapshots never use it, accept plain text.
                    let l = self.inp.line()?;
                    self.stack.push(Value::Str(Rc::new(l)));
                }
                op::SHORT_BINSTRING => {
                    let n = self.inp.byte()? as u64;
                    let b = self.inp.bytes(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                op::BINSTRING => {
                    let n = u32::from_le_bytes(self.inp.array()?) as u64;
                    let b = self.inp.bytes(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                op::STRING => {
                    let l = self.inp.line()?;
                    let t = l.trim();
                    let t = t
                        .strip_prefix('\'')
                        .and_then(|t| t.strip_suffix('\''))
                        .or_else(|| t.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
                        .unwrap_or(t);
                    self.stack
                        .push(Value::Bytes(Rc::new(t.as_bytes().to_vec())));
                }
                op::SHORT_BINBYTES => {
                    let n = self.inp.byte()? as u64;
                    let b = self.inp.bytes(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                op::BINBYTES => {
                    let n = u32::from_le_bytes(self.inp.array()?) as u64;
                    let b = self.inp.bytes(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = u64::from_le_bytes(self.inp.array()?);
                    let b = self.inp.bytes(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b)));
                }
                op::BININT1 => {
                    let b = self.inp.byte()?;
                    self.stack.push(Value::Int(b as i64));
                }
                op::BININT2 => {
                    let b = u16::from_le_bytes(self.inp.array()?);
                    self.stack.push(Value::Int(b as i64));
                }
                op::BININT => {
                    let b = i32::from_le_bytes(self.inp.array()?);
                    self.stack.push(Value::Int(b as i64));
                }
                op::LONG1 => {
                    let n = self.inp.byte()? as usize;
                    if n <= 8 {
                        let v = self.inp.small(n)?;
                        self.stack.push(v);
                    } else {
                        let b = self.inp.bytes(n as u64)?;
                        self.stack.push(bigint(b));
                    }
                }
                op::LONG4 => {
                    let n = i32::from_le_bytes(self.inp.array()?);
                    if n < 0 {
                        return self.inp.err("negative LONG4 length");
                    }
                    let b = self.inp.bytes(n as u64)?;
                    self.stack.push(bigint(b));
                }
                op::INT | op::LONG => {
                    let l = self.inp.line()?;
                    let t = l.trim().trim_end_matches('L');
                    let v = match t {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => match t.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.inp.err(format!("bad integer '{t}'")),
                        },
                    };
                    self.stack.push(v);
                }
                op::BINFLOAT => {
                    let b = f64::from_be_bytes(self.inp.array()?);
                    self.stack.push(Value::Float(b));
                }
                op::FLOAT => {
                    let l = self.inp.line()?;
                    match l.trim().parse::<f64>() {
                        Ok(f) => self.stack.push(Value::Float(f)),
                        Err(_) => return self.inp.err(format!("bad float '{l}'")),
                    }
                }
                op::NONE => self.stack.push(Value::None),
                op::NEWTRUE => self.stack.push(Value::Bool(true)),
                op::NEWFALSE => self.stack.push(Value::Bool(false)),
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (code - op::TUPLE1 + 1) as usize;
                    if self.stack.len() < n {
                        return self.inp.err("stack underflow (corrupt pickle)");
                    }
                    let at = self.stack.len() - n;
                    let items = self.take_from(at);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                op::TUPLE => {
                    let m = self.pop_mark()?;
                    let items = self.take_from(m);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                op::LIST | op::FROZENSET => {
                    let m = self.pop_mark()?;
                    let items = self.take_from(m);
                    self.stack.push(Value::new_list(items));
                }
                op::DICT => {
                    let m = self.pop_mark()?;
                    if (self.stack.len() - m) % 2 != 0 {
                        return self
                            .inp
                            .err("odd number of items for a dict (corrupt pickle)");
                    }
                    let items = self.take_from(m);
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    self.stack.push(Value::new_dict(pairs));
                }
                op::APPEND => {
                    if self.stack.is_empty() {
                        return self.inp.err("stack underflow (corrupt pickle)");
                    }
                    let at = self.stack.len() - 1;
                    self.append_from(at)?;
                }
                op::APPENDS | op::ADDITEMS => {
                    let m = self.pop_mark()?;
                    self.append_from(m)?;
                }
                op::SETITEM => {
                    if self.stack.len() < 2 {
                        return self.inp.err("stack underflow (corrupt pickle)");
                    }
                    let at = self.stack.len() - 2;
                    self.setitems_from(at)?;
                }
                op::SETITEMS => {
                    let m = self.pop_mark()?;
                    self.setitems_from(m)?;
                }
                op::POP => {
                    // POP of the top item, or of everything down to a MARK when the top is a MARK.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        let v = self.pop()?;
                        drop_values([v]);
                    }
                }
                op::POP_MARK => {
                    let m = self.pop_mark()?;
                    let items: Vec<Value> = self.stack.drain(m..).collect();
                    drop_values(items);
                }
                op::DUP => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => {
                    self.inp.pos -= 1;
                    return match refused_name(other) {
                        Some(name) => self.inp.err(format!(
                            "refusing pickle opcode {name}: a memory snapshot holds only plain data, \
                             and oomdoc never executes code from a file"
                        )),
                        None => self
                            .inp
                            .err(format!("unknown pickle opcode 0x{other:02x} (corrupt pickle)")),
                    };
                }
            }
        }
    }
}

fn intern_stack(
    stacks: &mut Vec<Box<[u32]>>,
    index: &mut HashMap<Box<[u32]>, u32, FxBuild>,
    ids: &[u32],
) -> u32 {
    if let Some(id) = index.get(ids) {
        return *id;
    }
    let id = stacks.len() as u32;
    let b: Box<[u32]> = ids.into();
    stacks.push(b.clone());
    index.insert(b, id);
    id
}

/// `slot_tags` value of a slot not looked at yet.
const TAG_UNKNOWN: u8 = 0;
/// `slot_tags` value of a slot that does not hold a string.
const TAG_NOT_STR: u8 = 0xff;
/// Slots above this are looked up each time, not cached (keys are memoised early in a file; this
/// bounds the cache at 1 MiB whatever the file says).
const MAX_TAGGED_SLOT: usize = 1 << 20;

/// [`Action`]s by their discriminant (`Action as u8`), to decode a slot tag.
const ACTIONS: [Action; 11] = [
    Action::Alloc,
    Action::FreeRequested,
    Action::FreeCompleted,
    Action::SegmentAlloc,
    Action::SegmentFree,
    Action::SegmentMap,
    Action::SegmentUnmap,
    Action::Snapshot,
    Action::Oom,
    Action::Annotate,
    Action::Unknown,
];

/// The keys of a trace entry (`TraceEntry` in CUDACachingAllocator.h, as `_snapshot()` names them).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Action,
    Addr,
    Size,
    Stream,
    TimeUs,
    DeviceFree,
    Frames,
    CompileContext,
    UserMetadata,
    Other,
}

/// [`Key`]s by their discriminant, to decode a slot tag.
const KEYS: [Key; 10] = [
    Key::Action,
    Key::Addr,
    Key::Size,
    Key::Stream,
    Key::TimeUs,
    Key::DeviceFree,
    Key::Frames,
    Key::CompileContext,
    Key::UserMetadata,
    Key::Other,
];

impl Key {
    fn parse(s: &str) -> Key {
        match s {
            "action" => Key::Action,
            "addr" => Key::Addr,
            "size" => Key::Size,
            "stream" => Key::Stream,
            "time_us" => Key::TimeUs,
            "device_free" => Key::DeviceFree,
            "frames" => Key::Frames,
            "compile_context" => Key::CompileContext,
            "user_metadata" => Key::UserMetadata,
            _ => Key::Other,
        }
    }
    /// From a slot tag (not `TAG_UNKNOWN` / `TAG_NOT_STR`).
    #[inline(always)]
    fn from_tag(tag: u8) -> Key {
        KEYS[((tag & 0x0f) as usize - 1).min(KEYS.len() - 1)]
    }
}

/// Interns a string in the table that the typed snapshot's strings come from.
fn intern(strings: &mut HashMap<String, Arc<str>, FxBuild>, s: &str) -> Arc<str> {
    if let Some(a) = strings.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    strings.insert(s.to_string(), a.clone());
    a
}

/// An integer opcode (or a bool, which the conversion takes as 0/1) at `p` (fast path).
#[inline(always)]
fn int_at(buf: &[u8], p: &mut usize) -> Option<i64> {
    let at = *p;
    let (v, len) = match *buf.get(at)? {
        op::BININT1 => (*buf.get(at + 1)? as i64, 2),
        op::BININT2 => {
            let b = buf.get(at + 1..at + 3)?;
            (u16::from_le_bytes([b[0], b[1]]) as i64, 3)
        }
        op::BININT => (le32(buf, at + 1)? as i32 as i64, 5),
        op::LONG1 => {
            let n = *buf.get(at + 1)? as usize;
            if n > 8 {
                return None;
            }
            let b = buf.get(at + 2..at + 2 + n)?;
            let v = if n == 0 {
                0
            } else {
                let mut w = if b[n - 1] & 0x80 != 0 {
                    [0xffu8; 8]
                } else {
                    [0u8; 8]
                };
                w[..n].copy_from_slice(b);
                i64::from_le_bytes(w)
            };
            (v, 2 + n)
        }
        op::NEWTRUE => (1, 1),
        op::NEWFALSE => (0, 1),
        _ => return None,
    };
    *p = at + len;
    Some(v)
}

#[inline(always)]
fn le32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A memo opcode for a new object whose slot must be `next` (the fast path keeps slots sequential,
/// as pickle writes them): `Some(true)` consumed one, `Some(false)` none there, `None` another slot.
#[inline(always)]
fn memo_op(buf: &[u8], p: &mut usize, next: usize) -> Option<bool> {
    let idx = match *buf.get(*p)? {
        op::MEMOIZE => {
            *p += 1;
            return (next < NO_MEMO as usize).then_some(true);
        }
        op::BINPUT => (*buf.get(*p + 1)? as usize, 2),
        op::LONG_BINPUT => (le32(buf, *p + 1)? as usize, 5),
        _ => return Some(false),
    };
    if idx.0 != next || next >= NO_MEMO as usize {
        return None;
    }
    *p += idx.1;
    Some(true)
}

/// A scalar, a string or a memo reference to a non-container, read from `buf` at `p` (fast path).
#[inline(always)]
fn scalar(buf: &[u8], p: &mut usize, memo: &[Option<Value>]) -> Option<Value> {
    let at = *p;
    let (v, len) = match *buf.get(at)? {
        op::BINGET | op::LONG_BINGET => {
            let (idx, len) = if buf[at] == op::BINGET {
                (*buf.get(at + 1)? as usize, 2)
            } else {
                (le32(buf, at + 1)? as usize, 5)
            };
            match memo.get(idx) {
                Some(Some(v)) if !is_container(v) => (v.clone(), len),
                _ => return None,
            }
        }
        op::BININT1 | op::BININT2 | op::BININT | op::LONG1 => {
            let mut q = at;
            let v = int_at(buf, &mut q)?;
            (Value::Int(v), q - at)
        }
        op::NONE => (Value::None, 1),
        op::NEWTRUE => (Value::Bool(true), 1),
        op::NEWFALSE => (Value::Bool(false), 1),
        op::BINFLOAT => {
            let b = buf.get(at + 1..at + 9)?;
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            (Value::Float(f64::from_be_bytes(w)), 9)
        }
        op::SHORT_BINUNICODE | op::BINUNICODE => {
            let (n, head) = if buf[at] == op::SHORT_BINUNICODE {
                (*buf.get(at + 1)? as usize, 2)
            } else {
                (le32(buf, at + 1)? as usize, 5)
            };
            let b = buf.get(at + head..at + head + n)?;
            let s = std::str::from_utf8(b).ok()?;
            (Value::Str(Rc::new(s.to_string())), head + n)
        }
        _ => return None,
    };
    *p = at + len;
    Some(v)
}

/// A dict that looks like a `device_traces` entry (has `action` and `size`).
fn is_trace_entry<'a>(items: impl Iterator<Item = (&'a Value, &'a Value)>) -> bool {
    let mut action = false;
    let mut size = false;
    for (k, _) in items {
        if let Value::Str(k) = k {
            match k.as_str() {
                "action" => action = true,
                "size" => size = true,
                _ => {}
            }
        }
    }
    action && size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(b: &[u8]) -> Res<Decoded> {
        decode(b)
    }

    #[test]
    fn decodes_plain_values() {
        // pickle.dumps({'a': [1, -2, 3.5, None, True], 'b': (300, 70000)}, protocol=2)
        let b = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03M,\x01Jp\x11\x01\x00\x86q\x04u.";
        let d = dec(b).unwrap();
        let Value::Dict(rc) = &d.root else { panic!() };
        let b = rc.borrow();
        let Map::Items(items) = &b.state else {
            panic!()
        };
        assert_eq!(items.len(), 2);
        let Value::List(l) = &items[0].1 else {
            panic!()
        };
        let lb = l.borrow();
        let Seq::Items(l) = &lb.state else { panic!() };
        assert!(matches!(l[1], Value::Int(-2)));
        assert!(matches!(l[2], Value::Float(f) if f == 3.5));
        assert!(matches!(l[4], Value::Bool(true)));
    }

    #[test]
    fn refuses_code() {
        // pickle.dumps(os.system) style: GLOBAL 'os system'
        let b = b"\x80\x02cos\nsystem\nq\x00.";
        let e = dec(b).err().unwrap();
        assert!(e.msg.contains("GLOBAL"), "{}", e.msg);
        assert_eq!(e.offset, 2);
    }

    #[test]
    fn truncated_and_not_pickle() {
        let e = dec(b"\x80\x04}q\x00(X\x05\x00\x00").err().unwrap();
        assert!(e.msg.contains("truncated"));
        let e = dec(b"hello").err().unwrap();
        assert!(e.msg.contains("not a pickle"));
        let e = dec(b"").err().unwrap();
        assert!(e.msg.contains("empty"));
        let e = dec(b"\x80\x04h\x05.").err().unwrap();
        assert!(e.msg.contains("memo"));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        // [[[...]]] one million deep via memo: ] MEMOIZE, then (] h<prev> a MEMOIZE)*
        let mut b = vec![0x80, 4, b']', 0x94];
        for i in 0..1_000_000u32 {
            b.push(b']');
            b.push(b'j');
            b.extend_from_slice(&i.to_le_bytes());
            b.push(b'a');
            b.push(0x94);
        }
        b.push(b'.');
        let d = dec(&b).unwrap();
        drop_values([d.root]);
    }

    #[test]
    fn a_dict_that_holds_itself_is_freed() {
        // d = {}; d["a"] = d: } MEMOIZE, "a" MEMOIZE, BINGET 0, SETITEM
        let b = b"\x80\x04}\x94\x8c\x01a\x94h\x00s.";
        let Decoded { root, cells, .. } = dec(b).unwrap();
        let Value::Dict(rc) = &root else { panic!() };
        let weak = Rc::downgrade(rc);
        drop_values([root]);
        assert!(weak.upgrade().is_some(), "the cycle keeps it");
        drop(cells);
        assert!(
            weak.upgrade().is_none(),
            "dropping the memoised cells frees the cycle"
        );
    }

    #[test]
    fn frames_list_in_two_batches() {
        // [[f], [f, f (second APPENDS)], <memo ref to the second list>]
        let mut b = vec![0x80, 4, b']', 0x94, b'(']; // outer list (memo 0), MARK
        b.extend_from_slice(b"]\x94(}\x94(\x8c\x08filename\x94\x8c\x04a.py\x94\x8c\x04line\x94K\x03\x8c\x04name\x94\x8c\x01f\x94ue");
        // memo: 1 inner list, 2 dict, 3..7 strings; next list is memo 8
        b.extend_from_slice(b"]\x94(h\x02e(h\x02e");
        b.extend_from_slice(b"h\x08e.");
        let d = dec(&b).unwrap();
        let Value::List(rc) = &d.root else { panic!() };
        let bb = rc.borrow();
        let Seq::Items(items) = &bb.state else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        let ids: Vec<&[u32]> = items
            .iter()
            .map(|v| match v {
                Value::Stack(id) => &d.stacks[*id as usize][..],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids[0], &[0]);
        assert_eq!(ids[1], &[0, 0]);
        assert_eq!(ids[2], &[0, 0]);
    }

    #[test]
    fn frames_are_interned_and_shared() {
        // [{'filename': 'a.py', 'line': 3, 'name': 'f'}] twice, second via memo
        let mut b = vec![0x80, 4, b']', 0x94, b'(']; // outer list, memo 0
        b.extend_from_slice(b"]\x94(}\x94(\x8c\x08filename\x94\x8c\x04a.py\x94\x8c\x04line\x94K\x03\x8c\x04name\x94\x8c\x01f\x94ue");
        // memo: 0 outer, 1 inner list, 2 dict, 3 'filename', 4 'a.py', 5 'line', 6 'name', 7 'f'
        b.extend_from_slice(b"h\x01e.");
        let d = dec(&b).unwrap();
        assert_eq!(d.frames.len(), 1);
        assert_eq!(d.stacks.len(), 2);
        let Value::List(rc) = &d.root else { panic!() };
        let b = rc.borrow();
        let Seq::Items(items) = &b.state else {
            panic!()
        };
        assert!(matches!(items[0], Value::Stack(1)));
        assert!(matches!(items[1], Value::Stack(1)));
    }

    /// The typed snapshot and the memo-visible effects, with and without the trace-entry fast
    /// path: they must be the same.
    fn both_ways(bytes: &[u8]) -> (String, String) {
        let run = |fast: bool| match decode_with(bytes, 0, fast) {
            Ok(d) => {
                let summary = format!("{} traces, {} stacks", d.traces.len(), d.stacks.len());
                match super::super::convert::snapshot(d) {
                    Ok(s) => format!("{summary}\n{}", serde_json::to_string(&s).unwrap()),
                    Err(e) => format!("{summary}\nconvert error: {e}"),
                }
            }
            Err(e) => format!("error at {}: {}", e.offset, e.msg),
        };
        (run(true), run(false))
    }

    fn gunzip(path: &std::path::Path) -> Vec<u8> {
        let mut out = Vec::new();
        let f = std::fs::File::open(path).unwrap();
        flate2::read::MultiGzDecoder::new(f)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn fast_path_agrees_with_the_general_path_on_the_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshots");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.to_string_lossy().to_string();
            let bytes = if name.ends_with(".pickle.gz") {
                gunzip(&path)
            } else if name.ends_with(".pickle") {
                std::fs::read(&path).unwrap()
            } else {
                continue;
            };
            let (fast, general) = both_ways(&bytes);
            assert!(fast == general, "{name}: fast path differs");
            // Cut anywhere: the same error or result either way.
            for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 7] {
                let (fast, general) = both_ways(&bytes[..cut]);
                assert_eq!(fast, general, "{name} cut at {cut}");
            }
            n += 1;
        }
        assert!(n >= 4, "fixtures not found");
    }

    #[test]
    fn fast_path_agrees_on_odd_entries() {
        // Memo: 0 the outer list, 1 'action', 2 'size', 3 'alloc', 4 'frames', 5 a frame dict,
        // 6..10 its keys and values; then entries in shapes that the fast path takes or leaves to
        // the general path (the slot each one memoises is noted).
        let mut head = vec![0x80, 4, b']', 0x94, b'('];
        head.extend_from_slice(
            b"\x8c\x06action\x94\x8c\x04size\x94\x8c\x05alloc\x94\x8c\x06frames\x94",
        );
        head.extend_from_slice(b"}\x94(\x8c\x08filename\x94\x8c\x04a.py\x94\x8c\x04line\x94K\x03\x8c\x04name\x94\x8c\x01f\x94u");
        let entries: &[&[u8]] = &[
            // 11, 12: {action: alloc, size: 5, frames: [f, f]}
            b"}\x94(h\x01h\x03h\x02K\x05h\x04]\x94(h\x05h\x05eu",
            // 13, 14: a memoised action string
            b"}\x94(h\x01\x8c\x04oom!\x94h\x02J\xff\xff\xff\x7fu",
            // 15: that string by reference, a LONG1 size and a LONG_BINGET key
            b"}\x94(h\x01h\x0ej\x02\x00\x00\x00\x8a\x05\x00\x00\x00\x00\x01u",
            // 16: negative size: not converted (the general path reports it)
            b"}\x94(h\x01h\x03h\x02J\xff\xff\xff\xffu",
            // 17: no action: a plain dict
            b"}\x94(h\x02K\x01u",
            // 18, 19: frames list in two batches
            b"}\x94(h\x01h\x03h\x02K\x05h\x04]\x94(h\x05e(h\x05eu",
            // 20: frames None; 21, 22: empty frames list; 23: a key that is not a string
            b"}\x94(h\x01h\x03h\x02K\x05h\x04Nu",
            b"}\x94(h\x01h\x03h\x02K\x05h\x04]\x94u",
            b"}\x94(h\x01h\x03h\x02K\x05K\x07K\x08u",
            // references to an earlier entry's dict and frames list, and frames by reference
            b"h\x0b",
            b"h\x0c",
            b"}\x94(h\x01h\x03h\x02K\x05h\x04h\x0cu",
            // a dict referring to a slot that does not exist yet
            b"}\x94(h\x01h\x03h\x02h\x7fu",
        ];
        for k in 1..=entries.len() {
            let mut b = head.clone();
            for e in &entries[..k] {
                b.extend_from_slice(e);
            }
            b.extend_from_slice(b"e.");
            let (fast, general) = both_ways(&b);
            assert_eq!(fast, general, "first {k} entries");
        }
    }
}
