//! GGUF v2/v3 reading (memory-mapped) and writing.
//!
//! The reader validates the whole header up front: every length, count, dimension and
//! offset is checked against the bytes that remain in the file before anything is
//! allocated, so a corrupt or hostile file fails with an error naming the byte offset
//! instead of exhausting memory. Tensor data is never copied: [`GgufFile::tensor_bytes`]
//! returns a slice of the mapping.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::atomic::AtomicFile;
use crate::error::{FormatError, Result};
use crate::mapped::{map_file, Bytes};
use crate::quant::{dequantize, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS: llama.cpp rejects tensors with more dimensions.
const MAX_DIMS: u32 = 4;
/// Nested arrays deeper than this are rejected, so a crafted file cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Metadata value types with their GGUF ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl GgufValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgufValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type takes in a file; bounds array counts.
    fn min_encoded_len(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufValueType::*;
        f.write_str(match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        })
    }
}

/// One metadata value. Arrays keep their declared element type so that an empty array, or
/// one rewritten by [`GgufWriter`], keeps the type it was read with.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufValueType, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        match self {
            GgufValue::U8(_) => GgufValueType::U8,
            GgufValue::I8(_) => GgufValueType::I8,
            GgufValue::U16(_) => GgufValueType::U16,
            GgufValue::I16(_) => GgufValueType::I16,
            GgufValue::U32(_) => GgufValueType::U32,
            GgufValue::I32(_) => GgufValueType::I32,
            GgufValue::F32(_) => GgufValueType::F32,
            GgufValue::Bool(_) => GgufValueType::Bool,
            GgufValue::String(_) => GgufValueType::String,
            GgufValue::Array(..) => GgufValueType::Array,
            GgufValue::U64(_) => GgufValueType::U64,
            GgufValue::I64(_) => GgufValueType::I64,
            GgufValue::F64(_) => GgufValueType::F64,
        }
    }

    /// A description for error messages, e.g. `string` or `array of 3 u32`.
    pub fn describe(&self) -> String {
        match self {
            GgufValue::Array(t, v) => format!("array of {} {t}", v.len()),
            v => v.value_type().to_string(),
        }
    }

    /// Any integer that fits in u64. Counts are u32 in most files and u64 in some, and
    /// readers must not care which.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// f32, or f64 narrowed to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for GgufValue {
            fn from(x: $t) -> Self {
                GgufValue::$v(x)
            }
        }
        impl From<Vec<$t>> for GgufValue {
            fn from(x: Vec<$t>) -> Self {
                GgufValue::Array(GgufValueType::$v, x.into_iter().map(GgufValue::$v).collect())
            }
        }
    )*};
}
value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32,
    bool => Bool, String => String, u64 => U64, i64 => I64, f64 => F64);

impl From<&str> for GgufValue {
    fn from(s: &str) -> Self {
        GgufValue::String(s.to_owned())
    }
}

impl From<Vec<&str>> for GgufValue {
    fn from(x: Vec<&str>) -> Self {
        GgufValue::Array(
            GgufValueType::String,
            x.into_iter().map(Into::into).collect(),
        )
    }
}

/// Where one tensor lives in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (row) length, so a torch
    /// `[out, in]` weight has `dims == [in, out]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data (whole rows of whole blocks).
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Element count (saturating: an info built by hand with absurd dims must not panic).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Elements in one row (`dims[0]`; 1 for a scalar).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Rows: the product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// The shape in torch/safetensors order (outermost first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// Data size of a tensor with these ggml dims, checked: every row a whole number of blocks
/// and no overflow. The error text describes the problem for the caller's error.
fn tensor_n_bytes(dims: &[u64], ty: GgmlType) -> std::result::Result<u64, String> {
    let n_elems = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("dims {dims:?} overflow"))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ty.block_elems() as u64 != 0 {
        return Err(format!(
            "row length {ne0} is not a multiple of the {ty} block size {}",
            ty.block_elems()
        ));
    }
    (n_elems / ty.block_elems() as u64)
        .checked_mul(ty.block_bytes() as u64)
        .ok_or_else(|| format!("dims {dims:?} overflow a byte size"))
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v / align * align)
}

/// An open GGUF file: parsed metadata and tensor infos over a memory map of the file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader whose errors carry the file and offset.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, at: usize, what: String) -> FormatError {
        FormatError::Corrupt {
            path: self.path.to_path_buf(),
            offset: at as u64,
            what,
        }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.corrupt(
                self.pos,
                format!(
                    "{what} needs {n} bytes but only {} remain (truncated file?)",
                    self.remaining()
                ),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.corrupt(at, format!("{what} is not valid UTF-8: {e}")))
    }

    /// A count of items of at least `min_len` bytes each, rejected if they could not fit in
    /// the rest of the file — the guard that keeps hostile counts from allocating.
    fn count(&mut self, what: &str, min_len: u64) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n.checked_mul(min_len).is_none_or(|b| b > self.remaining()) {
            return Err(self.corrupt(
                at,
                format!(
                    "{what} is {n}, more than the {} remaining bytes can hold",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn value_type(&mut self, what: &str) -> Result<GgufValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        GgufValueType::from_id(id)
            .ok_or_else(|| self.corrupt(at, format!("{what}: unknown value type {id}")))
    }

    fn value(&mut self, ty: GgufValueType, key: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.array::<1>(key)?[0]),
            GgufValueType::I8 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            GgufValueType::U32 => GgufValue::U32(self.u32(key)?),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            GgufValueType::U64 => GgufValue::U64(self.u64(key)?),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            GgufValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(key)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(self.corrupt(at, format!("{key}: bool byte is {b}"))),
                }
            }
            GgufValueType::String => GgufValue::String(self.string(key)?),
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(
                        self.pos,
                        format!("{key}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem = self.value_type(key)?;
                let n = self.count(key, elem.min_encoded_len())?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                GgufValue::Array(elem, items)
            }
        })
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(path.to_path_buf(), map_file(path)?)
    }

    /// Parses GGUF bytes already in memory; `path` only labels errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.into(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
            path: &path,
        };
        let magic = r.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(r.corrupt(0, format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.corrupt(4, format!("GGUF version {version} (bora reads 2 and 3)")));
        }
        // A tensor info takes at least 24 bytes, a key-value pair at least 13.
        let n_tensors = r.count("tensor count", 24)?;
        let n_kv = r.count("metadata count", 13)?;

        let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv);
        for _ in 0..n_kv {
            let at = r.pos;
            let key = r.string("metadata key")?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(r.corrupt(at, format!("duplicate metadata key `{key}`")));
            }
            let ty = r.value_type(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(FormatError::Invalid {
                        path: path.clone(),
                        what: format!(
                            "{ALIGNMENT_KEY} must be a power of two, got {}",
                            v.describe()
                        ),
                    })
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let at = r.pos;
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims > MAX_DIMS {
                return Err(r.corrupt(at, format!("tensor `{name}` has {n_dims} dims (max 4)")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<u64>>>()?;
            let ty_at = r.pos;
            let ty_id = r.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                r.corrupt(
                    ty_at,
                    format!("tensor `{name}` has unknown ggml type {ty_id}"),
                )
            })?;
            let offset = r.u64(&name)?;
            let n_bytes = tensor_n_bytes(&dims, ty)
                .map_err(|what| r.corrupt(at, format!("tensor `{name}`: {what}")))?;
            if offset % alignment != 0 {
                return Err(r.corrupt(
                    at,
                    format!("tensor `{name}` offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if tensor_index.insert(name.clone(), i).is_some() {
                return Err(r.corrupt(at, format!("duplicate tensor name `{name}`")));
            }
            tensors.push(GgufTensorInfo {
                name,
                dims,
                ty,
                offset,
                n_bytes,
            });
        }

        let file_len = bytes.len() as u64;
        let data_offset = align_up(r.pos as u64, alignment).unwrap_or(u64::MAX);
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            if end.is_none_or(|e| e > file_len) {
                return Err(FormatError::Invalid {
                    path,
                    what: format!(
                        "tensor `{}` ({} bytes at data offset {}) extends past the end of the {file_len}-byte file",
                        t.name, t.n_bytes, t.offset
                    ),
                });
            }
        }

        Ok(Self {
            path,
            bytes,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn typed<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'s GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| FormatError::WrongType {
                path: self.path.clone(),
                key: key.to_owned(),
                expected,
                found: v.describe(),
            }),
        }
    }

    fn required<T>(&self, key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| FormatError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    /// An unsigned count stored with any integer width (negative values are an error).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "f32", GgufValue::as_f32)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "string", GgufValue::as_str)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "bool", GgufValue::as_bool)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.required(key, self.opt_u64(key))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.required(key, self.opt_f32(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.required(key, self.opt_str(key))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.required(key, self.opt_bool(key))
    }

    fn array_of<'s, T>(
        &'s self,
        key: &str,
        expected: &'static str,
        conv: impl Fn(&'s GgufValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        let v = self.typed(key, expected, |v| {
            v.as_array()?.iter().map(&conv).collect::<Option<Vec<T>>>()
        });
        self.required(key, v)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.array_of(key, "array of string", GgufValue::as_str)
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.array_of(key, "array of f32", GgufValue::as_f32)
    }

    /// Integers of any width that fit in i32 (token types are i32, but not always).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.array_of(key, "array of integers fitting i32", |v| {
            v.as_i64().and_then(|x| i32::try_from(x).ok())
        })
    }

    /// Integers of any width that fit in u32 (token id lists).
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.array_of(key, "array of integers fitting u32", |v| {
            v.as_u64().and_then(|x| u32::try_from(x).ok())
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Like [`GgufFile::tensor`], but a missing tensor is an error naming the file.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor(name).ok_or_else(|| FormatError::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })
    }

    /// The raw data of `info`, checked against the file (an info built by hand is checked
    /// as strictly as one read from the header).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let range = tensor_n_bytes(&info.dims, info.ty)
            .ok()
            .filter(|&n| n == info.n_bytes)
            .and_then(|n| {
                let start = self.data_offset.checked_add(info.offset)?;
                Some(usize::try_from(start).ok()?..usize::try_from(start.checked_add(n)?).ok()?)
            });
        range
            .and_then(|r| self.bytes.get(r))
            .ok_or_else(|| FormatError::Invalid {
                path: self.path.clone(),
                what: format!(
                    "tensor `{}` ({} {:?}, {} bytes at data offset {}) does not lie within the file",
                    info.name, info.ty, info.dims, info.n_bytes, info.offset
                ),
            })
    }

    /// The whole tensor decoded to f32, in ggml element order.
    pub fn tensor_f32(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(info)?;
        let n = usize::try_from(info.n_elements()).map_err(|_| FormatError::Invalid {
            path: self.path.clone(),
            what: format!("tensor `{}` is too large for this machine", info.name),
        })?;
        let mut out = vec![0f32; n];
        dequantize(info.ty, bytes, &mut out)?;
        Ok(out)
    }
}

/// Builds a GGUF v3 file: declare metadata and tensor infos, then [`GgufWriter::create`]
/// writes the header and returns a [`GgufTensorWriter`] that streams tensor data in the
/// declared order, so a large model never has to sit in memory whole.
///
/// Layout matches gguf-py's `GGUFWriter`: header, metadata, tensor infos, zero padding to
/// the alignment, then each tensor followed by zero padding to the alignment.
#[derive(Debug, Default)]
pub struct GgufWriter {
    alignment: Option<u64>,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    next_offset: u64,
}

fn writer_err(what: String) -> FormatError {
    FormatError::Invalid {
        path: PathBuf::from("<gguf writer>"),
        what,
    }
}

fn encode_value(out: &mut Vec<u8>, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => encode_str(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(elem, items) => {
            out.extend_from_slice(&elem.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *elem {
                    return Err(writer_err(format!(
                        "array declared as {elem} holds a {}",
                        item.describe()
                    )));
                }
                encode_value(out, item)?;
            }
        }
    }
    Ok(())
}

fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn alignment(&self) -> u64 {
        self.alignment.unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Adds a key in order. `general.alignment` also sets the alignment used for the data,
    /// and must come before any tensor info.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<GgufValue>,
    ) -> Result<()> {
        let key = key.into();
        let value = value.into();
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(writer_err(format!("duplicate metadata key `{key}`")));
        }
        if key == ALIGNMENT_KEY {
            let a = value
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    writer_err(format!(
                        "{ALIGNMENT_KEY} must be a power of two, got {}",
                        value.describe()
                    ))
                })?;
            if !self.tensors.is_empty() {
                return Err(writer_err(format!(
                    "{ALIGNMENT_KEY} must be set before tensors"
                )));
            }
            self.alignment = Some(a);
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declares the next tensor (dims in ggml order); its data is written later, in this
    /// order, through [`GgufTensorWriter::write_tensor`].
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<()> {
        let name = name.into();
        if dims.len() > MAX_DIMS as usize {
            return Err(writer_err(format!(
                "tensor `{name}` has {} dims (max 4)",
                dims.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(writer_err(format!("duplicate tensor name `{name}`")));
        }
        let n_bytes = tensor_n_bytes(dims, ty)
            .map_err(|what| writer_err(format!("tensor `{name}`: {what}")))?;
        let offset = self.next_offset;
        self.next_offset = align_up(offset.saturating_add(n_bytes), self.alignment())
            .ok_or_else(|| writer_err(format!("tensor `{name}` overflows the file size")))?;
        self.tensors.push(GgufTensorInfo {
            name,
            dims: dims.to_vec(),
            ty,
            offset,
            n_bytes,
        });
        Ok(())
    }

    /// Encodes everything up to the start of the data section.
    fn header(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            encode_str(&mut out, k);
            out.extend_from_slice(&v.value_type().id().to_le_bytes());
            encode_value(&mut out, v)?;
        }
        for t in &self.tensors {
            encode_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = align_up(out.len() as u64, self.alignment()).unwrap_or(u64::MAX);
        out.resize(padded as usize, 0);
        Ok(out)
    }

    /// Starts writing `path` (under a temporary name until [`GgufTensorWriter::finish`]).
    pub fn create(self, path: impl AsRef<Path>) -> Result<GgufTensorWriter> {
        let header = self.header()?;
        let mut file = AtomicFile::create(path.as_ref())?;
        file.write_all(&header)?;
        Ok(GgufTensorWriter {
            file,
            alignment: self.alignment(),
            tensors: self.tensors,
            next: 0,
        })
    }
}

/// Streams tensor data into a file begun by [`GgufWriter::create`].
pub struct GgufTensorWriter {
    file: AtomicFile,
    alignment: u64,
    tensors: Vec<GgufTensorInfo>,
    next: usize,
}

impl GgufTensorWriter {
    fn err(&self, what: String) -> FormatError {
        FormatError::Invalid {
            path: self.file.path().to_path_buf(),
            what,
        }
    }

    /// Writes the data of the next declared tensor; `name` must be that tensor's and
    /// `data` exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(self.err(format!("tensor `{name}` was not declared")));
        };
        if t.name != name {
            return Err(self.err(format!(
                "expected data for tensor `{}`, got `{name}`",
                t.name
            )));
        }
        if data.len() as u64 != t.n_bytes {
            return Err(self.err(format!(
                "tensor `{name}` ({} {:?}) needs {} bytes, got {}",
                t.ty,
                t.dims,
                t.n_bytes,
                data.len()
            )));
        }
        let pad = (self.alignment - t.n_bytes % self.alignment) % self.alignment;
        self.file.write_all(data)?;
        self.file.write_all(&vec![0u8; pad as usize])?;
        self.next += 1;
        Ok(())
    }

    /// Checks every tensor was written, then syncs and renames the file into place.
    pub fn finish(self) -> Result<()> {
        self.finish_checked(|_| Ok(()))
    }

    /// [`GgufTensorWriter::finish`], with `check` run on the complete file under its
    /// temporary name first (a reload test): the file gets its final name only when `check`
    /// passes, so a failed or interrupted check never leaves an unproven file there.
    pub fn finish_checked<T, E: From<FormatError>>(
        self,
        check: impl FnOnce(&Path) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(self
                .err(format!(
                    "tensor `{}` was declared but never written",
                    t.name
                ))
                .into());
        }
        self.file.commit_checked(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_counts_fail_without_allocating() {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let e = GgufFile::from_bytes("x.gguf", b).unwrap_err().to_string();
        assert!(e.contains("x.gguf") && e.contains("tensor count"), "{e}");
    }
}
