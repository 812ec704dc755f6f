//! GGUF (v2/v3) read and write, just enough for two jobs: checking a model file before llama.cpp
//! sees it (a truncated or foreign file gets one clear line instead of a loader trace), and
//! writing random-weight models of real shapes (`dhsa models synth`).
//!
//! Layout: magic "GGUF", version u32, tensor count u64, KV count u64; the KV pairs (string key,
//! u32 type, value); per tensor its name, dims (u64 each, innermost first), ggml type u32 and data
//! offset u64; then, aligned to `general.alignment` (default 32), the tensor data. All little-endian.

use anyhow::{Result, anyhow, bail};
use ggml_sys as sys;
use std::io::{BufReader, Read, Write};
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// element type code and elements (all of that type)
    Array(u32, Vec<Value>),
}

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

impl Value {
    fn type_code(&self) -> u32 {
        match self {
            Value::U8(_) => T_U8,
            Value::I8(_) => T_I8,
            Value::U16(_) => T_U16,
            Value::I16(_) => T_I16,
            Value::U32(_) => T_U32,
            Value::I32(_) => T_I32,
            Value::F32(_) => T_F32,
            Value::Bool(_) => T_BOOL,
            Value::Str(_) => T_STR,
            Value::U64(_) => T_U64,
            Value::I64(_) => T_I64,
            Value::F64(_) => T_F64,
            Value::Array(..) => T_ARRAY,
        }
    }

    pub fn strs<S: AsRef<str>>(xs: &[S]) -> Value {
        Value::Array(T_STR, xs.iter().map(|s| Value::Str(s.as_ref().to_string())).collect())
    }

    pub fn i32s(xs: &[i32]) -> Value {
        Value::Array(T_I32, xs.iter().map(|&x| Value::I32(x)).collect())
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(x as u64),
            Value::U16(x) => Some(x as u64),
            Value::U32(x) => Some(x as u64),
            Value::U64(x) => Some(x),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// innermost first (ggml's ne)
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// from the start of the data section
    pub offset: u64,
}

impl TensorInfo {
    /// Bytes of data, from ggml's own type table.
    pub fn nbytes(&self) -> Result<u64> {
        tensor_bytes(&self.name, &self.dims, self.ggml_type)
    }
}

fn tensor_bytes(name: &str, dims: &[u64], t: u32) -> Result<u64> {
    if t >= sys::GGML_TYPE_COUNT {
        bail!("tensor {name} has unknown ggml type {t}");
    }
    // SAFETY: table lookups for a type code below GGML_TYPE_COUNT.
    let (blck, size) = unsafe { (sys::ggml_blck_size(t as sys::ggml_type), sys::ggml_type_size(t as sys::ggml_type)) };
    if blck <= 0 || size == 0 {
        bail!("tensor {name} has ggml type {t}, which this ggml no longer supports");
    }
    let ne0 = *dims.first().unwrap_or(&1);
    if !ne0.is_multiple_of(blck as u64) {
        bail!("tensor {name}: row length {ne0} is not a multiple of its type's block of {blck}");
    }
    let mut n = (ne0 / blck as u64).checked_mul(size as u64);
    for &d in dims.iter().skip(1) {
        n = n.and_then(|n| n.checked_mul(d));
    }
    n.ok_or_else(|| anyhow!("tensor {name} is impossibly large ({dims:?})"))
}

/// Everything before the tensor data.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// where the data section starts in the file
    pub data_offset: u64,
    pub file_len: u64,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// End of the last tensor's data, from the start of the file.
    pub fn data_end(&self) -> Result<u64> {
        let mut end = self.data_offset;
        for t in &self.tensors {
            let e = self
                .data_offset
                .checked_add(t.offset)
                .and_then(|o| o.checked_add(t.nbytes().ok()?))
                .ok_or_else(|| anyhow!("tensor {} lies beyond any possible file size", t.name))?;
            end = end.max(e);
        }
        Ok(end)
    }
}

/// Why a file is not a usable GGUF. Each renders as one line that names the file.
#[derive(Debug)]
pub enum Problem {
    Unreadable(String),
    NotGguf,
    Version(u32),
    /// the header or table stops early
    TruncatedHeader,
    /// the tensor data is shorter than the table says
    TruncatedData {
        need: u64,
        have: u64,
    },
    Corrupt(String),
}

/// A `Problem` with the file it concerns.
#[derive(Debug)]
pub struct Error {
    pub path: String,
    pub problem: Problem,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.path;
        match &self.problem {
            Problem::Unreadable(e) => write!(f, "cannot read model {p}: {e}"),
            Problem::NotGguf => write!(f, "{p} is not a GGUF model file (it does not start with the GGUF magic)"),
            Problem::Version(v) => write!(f, "{p} is GGUF version {v}; llama.cpp reads versions 2 and 3"),
            Problem::TruncatedHeader => {
                write!(f, "{p} is a truncated GGUF file: it ends inside its header (an interrupted download?)")
            }
            Problem::TruncatedData { need, have } => write!(
                f,
                "{p} is a truncated GGUF file: its tensors need {need} bytes but the file has {have} ({:.1} MiB missing; an interrupted download?)",
                (need - have) as f64 / (1u64 << 20) as f64
            ),
            Problem::Corrupt(e) => write!(f, "{p} is a corrupt GGUF file: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// A reader that knows how many bytes the file has left, so that a length field can be checked
/// before anything is allocated for it.
struct Src<R> {
    r: R,
    pos: u64,
    len: u64,
}

/// Inside the parser: `None` = the file ended, `Some(msg)` = a malformed field.
type Fail = Option<String>;

impl<R: Read> Src<R> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, Fail> {
        if n > self.len - self.pos {
            return Err(None);
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).map_err(|_| None)?;
        self.pos += n;
        Ok(b)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
        let mut b = [0u8; N];
        if (N as u64) > self.len - self.pos {
            return Err(None);
        }
        self.r.read_exact(&mut b).map_err(|_| None)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, Fail> {
        Ok(u32::from_le_bytes(self.arr()?))
    }

    fn u64(&mut self) -> Result<u64, Fail> {
        Ok(u64::from_le_bytes(self.arr()?))
    }

    fn string(&mut self) -> Result<String, Fail> {
        let n = self.u64()?;
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| Some("a string is not UTF-8".to_string()))
    }

    fn value(&mut self, t: u32, depth: u32) -> Result<Value, Fail> {
        Ok(match t {
            T_U8 => Value::U8(self.arr::<1>()?[0]),
            T_I8 => Value::I8(self.arr::<1>()?[0] as i8),
            T_U16 => Value::U16(u16::from_le_bytes(self.arr()?)),
            T_I16 => Value::I16(i16::from_le_bytes(self.arr()?)),
            T_U32 => Value::U32(self.u32()?),
            T_I32 => Value::I32(i32::from_le_bytes(self.arr()?)),
            T_F32 => Value::F32(f32::from_le_bytes(self.arr()?)),
            T_BOOL => Value::Bool(self.arr::<1>()?[0] != 0),
            T_STR => Value::Str(self.string()?),
            T_U64 => Value::U64(self.u64()?),
            T_I64 => Value::I64(i64::from_le_bytes(self.arr()?)),
            T_F64 => Value::F64(f64::from_le_bytes(self.arr()?)),
            T_ARRAY if depth == 0 => {
                let et = self.u32()?;
                let n = self.u64()?;
                // every element takes at least one byte: a count beyond the file is a truncation
                if n > self.len - self.pos {
                    return Err(None);
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                Value::Array(et, v)
            }
            T_ARRAY => return Err(Some("nested arrays".into())),
            t => return Err(Some(format!("unknown metadata type {t}"))),
        })
    }
}

fn read_header(path: &Path) -> Result<Header, Problem> {
    let meta = std::fs::metadata(path).map_err(|e| Problem::Unreadable(e.to_string()))?;
    if meta.is_dir() {
        return Err(Problem::Unreadable("it is a directory, not a GGUF file".into()));
    }
    let f = std::fs::File::open(path).map_err(|e| Problem::Unreadable(e.to_string()))?;
    parse(BufReader::with_capacity(1 << 20, f), meta.len())
}

/// Parses the header and tensor table from `r`, which holds `len` bytes.
fn parse<R: Read>(r: R, len: u64) -> Result<Header, Problem> {
    let mut s = Src { r, pos: 0, len };
    let fail = |e: Fail| e.map_or(Problem::TruncatedHeader, Problem::Corrupt);
    match s.arr::<4>() {
        Ok(m) if &m == MAGIC => {}
        _ => return Err(Problem::NotGguf),
    }
    let version = s.u32().map_err(fail)?;
    if !(2..=3).contains(&version) {
        return Err(Problem::Version(version));
    }
    let n_tensors = s.u64().map_err(fail)?;
    let n_kv = s.u64().map_err(fail)?;
    // each entry takes at least 8 bytes (a string length)
    if n_tensors.saturating_add(n_kv) > (s.len - s.pos) / 8 {
        return Err(Problem::TruncatedHeader);
    }
    let mut kv = Vec::with_capacity(n_kv as usize);
    for _ in 0..n_kv {
        let k = s.string().map_err(fail)?;
        let t = s.u32().map_err(fail)?;
        let v = s.value(t, 0).map_err(|e| fail(e.map(|m| format!("{m} in {k}"))))?;
        kv.push((k, v));
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = s.string().map_err(fail)?;
        let nd = s.u32().map_err(fail)?;
        if nd > 4 {
            return Err(Problem::Corrupt(format!("tensor {name} has {nd} dimensions")));
        }
        let dims = (0..nd).map(|_| s.u64()).collect::<Result<Vec<_>, _>>().map_err(fail)?;
        let ggml_type = s.u32().map_err(fail)?;
        let offset = s.u64().map_err(fail)?;
        tensors.push(TensorInfo { name, dims, ggml_type, offset });
    }
    let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => *a as u64,
        Some((_, v)) => return Err(Problem::Corrupt(format!("general.alignment is {v:?}"))),
    };
    let data_offset = s.pos.div_ceil(alignment) * alignment;
    Ok(Header { version, kv, tensors, alignment, data_offset, file_len: s.len })
}

/// Reads the header and table of `path`.
pub fn read(path: &Path) -> Result<Header, Error> {
    read_header(path).map_err(|problem| Error { path: path.display().to_string(), problem })
}

/// Reads `path` and checks that every tensor's type is known and its data lies inside the file.
pub fn check(path: &Path) -> Result<Header, Error> {
    let err = |problem| Error { path: path.display().to_string(), problem };
    let h = read(path)?;
    validate(&h).map_err(err)?;
    Ok(h)
}

/// `check` for a file held in memory (named `name` in errors).
pub fn check_bytes(name: &str, bytes: &[u8]) -> Result<Header, Error> {
    let err = |problem| Error { path: name.to_string(), problem };
    let h = parse(bytes, bytes.len() as u64).map_err(err)?;
    validate(&h).map_err(err)?;
    Ok(h)
}

fn validate(h: &Header) -> Result<(), Problem> {
    for t in &h.tensors {
        t.nbytes().map_err(|e| Problem::Corrupt(e.to_string()))?;
        if !t.offset.is_multiple_of(h.alignment) {
            return Err(Problem::Corrupt(format!("tensor {} is not aligned", t.name)));
        }
    }
    // llama.cpp asserts (aborts) on a vocabulary with a repeated token
    if let Some(Value::Array(_, toks)) = h.get("tokenizer.ggml.tokens") {
        let mut seen = std::collections::HashSet::with_capacity(toks.len());
        for t in toks {
            if let Value::Str(t) = t
                && !seen.insert(t.as_str())
            {
                return Err(Problem::Corrupt(format!("tokenizer.ggml.tokens repeats the token {t:?}")));
            }
        }
    }
    let need = h.data_end().map_err(|e| Problem::Corrupt(e.to_string()))?;
    if need > h.file_len {
        return Err(Problem::TruncatedData { need, have: h.file_len });
    }
    Ok(())
}

/// Builds a GGUF file: metadata and a tensor table, then the data, streamed by the caller.
#[derive(Default)]
pub struct Writer {
    kv: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    data_len: u64,
}

impl Writer {
    pub fn kv(&mut self, key: &str, v: Value) {
        self.kv.push((key.to_string(), v));
    }

    /// Adds a tensor; its data comes later, in the order of these calls.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32) -> Result<()> {
        let nbytes = tensor_bytes(name, dims, ggml_type)?;
        self.tensors.push(TensorInfo { name: name.into(), dims: dims.to_vec(), ggml_type, offset: self.data_len });
        self.data_len += nbytes.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        Ok(())
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Total file size once written.
    pub fn file_len(&self) -> u64 {
        self.header_len().div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT + self.data_len
    }

    fn header_len(&self) -> u64 {
        let mut v = Vec::new();
        self.write_header(&mut v).map_or(0, |_| v.len() as u64)
    }

    fn write_header(&self, out: &mut impl Write) -> std::io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(self.kv.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kv {
            write_str(out, k)?;
            out.write_all(&v.type_code().to_le_bytes())?;
            write_value(out, v)?;
        }
        for t in &self.tensors {
            write_str(out, &t.name)?;
            out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&t.ggml_type.to_le_bytes())?;
            out.write_all(&t.offset.to_le_bytes())?;
        }
        Ok(())
    }

    /// Writes the file. `fill(i, chunk)` fills the next bytes of tensor `i`'s data; chunks are whole
    /// rows, at most about `CHUNK` bytes, in order.
    pub fn write(&self, out: &mut impl Write, fill: &mut dyn FnMut(usize, &mut [u8])) -> Result<()> {
        const CHUNK: u64 = 8 << 20;
        let mut pos = 0u64;
        let mut counting = Counting { inner: out, n: &mut pos };
        self.write_header(&mut counting)?;
        pad(&mut counting)?;
        let mut buf = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let nbytes = t.nbytes()?;
            let rows: u64 = t.dims.iter().skip(1).product::<u64>().max(1);
            let row = nbytes / rows;
            let per = (CHUNK / row.max(1)).max(1);
            let mut done = 0;
            while done < rows {
                let n = per.min(rows - done);
                buf.resize((n * row) as usize, 0);
                fill(i, &mut buf);
                counting.write_all(&buf)?;
                done += n;
            }
            pad(&mut counting)?;
        }
        Ok(())
    }
}

struct Counting<'a, W> {
    inner: &'a mut W,
    n: &'a mut u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(b)?;
        *self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(c: &mut Counting<'_, W>) -> std::io::Result<()> {
    let rem = (*c.n % DEFAULT_ALIGNMENT) as usize;
    if rem != 0 {
        c.write_all(&[0u8; DEFAULT_ALIGNMENT as usize][..DEFAULT_ALIGNMENT as usize - rem])?;
    }
    Ok(())
}

fn write_str(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn write_value(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => out.write_all(&[*x]),
        Value::I8(x) => out.write_all(&[*x as u8]),
        Value::U16(x) => out.write_all(&x.to_le_bytes()),
        Value::I16(x) => out.write_all(&x.to_le_bytes()),
        Value::U32(x) => out.write_all(&x.to_le_bytes()),
        Value::I32(x) => out.write_all(&x.to_le_bytes()),
        Value::F32(x) => out.write_all(&x.to_le_bytes()),
        Value::Bool(x) => out.write_all(&[*x as u8]),
        Value::Str(s) => write_str(out, s),
        Value::U64(x) => out.write_all(&x.to_le_bytes()),
        Value::I64(x) => out.write_all(&x.to_le_bytes()),
        Value::F64(x) => out.write_all(&x.to_le_bytes()),
        Value::Array(t, xs) => {
            out.write_all(&t.to_le_bytes())?;
            out.write_all(&(xs.len() as u64).to_le_bytes())?;
            for x in xs {
                write_value(out, x)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let dir = std::env::temp_dir().join(format!("dhsa-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let mut w = Writer::default();
        let values = vec![
            ("a.u8", Value::U8(7)),
            ("a.i8", Value::I8(-7)),
            ("a.u16", Value::U16(65535)),
            ("a.i16", Value::I16(-300)),
            ("a.u32", Value::U32(1 << 31)),
            ("a.i32", Value::I32(-5)),
            ("a.f32", Value::F32(0.25)),
            ("a.bool", Value::Bool(true)),
            ("a.str", Value::Str("héllo".into())),
            ("a.u64", Value::U64(u64::MAX)),
            ("a.i64", Value::I64(i64::MIN)),
            ("a.f64", Value::F64(-1.5)),
            ("a.strs", Value::strs(&["x", "", "yz"])),
            ("a.i32s", Value::i32s(&[1, -2, 3])),
            ("a.empty", Value::strs::<&str>(&[])),
        ];
        for (k, v) in &values {
            w.kv(k, v.clone());
        }
        w.tensor("t0", &[64, 3], sys::GGML_TYPE_Q4_0).unwrap();
        w.tensor("t1", &[5], sys::GGML_TYPE_F32).unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        w.write(&mut f, &mut |i, chunk| chunk.fill(i as u8 + 1)).unwrap();
        drop(f);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, w.file_len());

        let h = check(&path).unwrap();
        assert_eq!(h.version, VERSION);
        for (k, v) in &values {
            assert_eq!(h.get(k), Some(v), "{k}");
        }
        assert_eq!(h.tensors, w.tensors());
        let t0 = &h.tensors[0];
        assert_eq!(t0.nbytes().unwrap(), 3 * 2 * 18);
        let at = (h.data_offset + t0.offset) as usize;
        assert!(bytes[at..at + 108].iter().all(|&b| b == 1));
        let t1 = &h.tensors[1];
        let at = (h.data_offset + t1.offset) as usize;
        assert!(bytes[at..at + 20].iter().all(|&b| b == 2));

        // every cut inside the header, and every cut inside the data, is called a truncation
        for cut in [3, 4, 20, 200, h.data_offset as usize + 10, h.data_end().unwrap() as usize - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let e = check(&path).unwrap_err();
            let want_header = cut < h.data_offset as usize;
            match e.problem {
                Problem::NotGguf => assert!(cut < 4),
                Problem::TruncatedHeader => assert!(want_header && cut >= 4, "cut {cut}"),
                Problem::TruncatedData { need, have } => {
                    assert!(!want_header, "cut {cut}");
                    assert_eq!((need, have), (h.data_end().unwrap(), cut as u64));
                }
                p => panic!("cut {cut}: {p:?}"),
            }
        }
        let mut bad = bytes.clone();
        bad[4] = 9;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(check(&path).unwrap_err().problem, Problem::Version(9)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
