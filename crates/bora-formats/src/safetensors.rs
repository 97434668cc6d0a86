//! safetensors checkpoints: one file, or a directory of shards with
//! `model.safetensors.index.json`, memory-mapped and read without copying.
//!
//! Header parsing and validation are the `safetensors` crate's (the same code Hugging Face
//! ships); this module adds the memory map, sharded directories, conversion to f32 and
//! crash-safe writing, and puts the file name into every error.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata, View};
pub use safetensors::Dtype;
use serde::Deserialize;

use crate::atomic::AtomicFile;
use crate::error::{FormatError, Result};
use crate::mapped::{map_file, Bytes};
use crate::quant::{self, GgmlType};

/// The index file transformers writes next to sharded checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The ggml type with the same element encoding, for the dtypes bora converts.
pub fn dtype_to_ggml(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::F32 => Some(GgmlType::F32),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        _ => None,
    }
}

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTensorInfo {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major shape, outermost first (torch order).
    pub shape: Vec<usize>,
    file: usize,
    start: usize,
    end: usize,
}

impl SafeTensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

struct Shard {
    path: PathBuf,
    bytes: Bytes,
    metadata: HashMap<String, String>,
}

/// An opened checkpoint (one or more files).
pub struct Safetensors {
    shards: Vec<Shard>,
    tensors: Vec<SafeTensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for Safetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Safetensors")
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct IndexJson {
    weight_map: BTreeMap<String, String>,
}

fn invalid(path: &Path, what: String) -> FormatError {
    FormatError::Invalid {
        path: path.to_path_buf(),
        what,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses one file's header and lists its tensors (appended to `tensors`, tagged with
/// `file`).
fn open_shard(
    path: &Path,
    bytes: Bytes,
    file: usize,
    tensors: &mut Vec<SafeTensorInfo>,
) -> Result<Shard> {
    let (header_len, meta): (usize, Metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| invalid(path, format!("not a valid safetensors file: {e}")))?;
    let data_start = 8 + header_len;
    let mut listed: Vec<SafeTensorInfo> = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| SafeTensorInfo {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            file,
            start: data_start + info.data_offsets.0,
            end: data_start + info.data_offsets.1,
        })
        .collect();
    listed.sort_by_key(|t| t.start);
    for t in &listed {
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d))
            .map(|bits| bits.div_ceil(8));
        if bytes.get(t.start..t.end).is_none() || expected != Some(t.end - t.start) {
            return Err(invalid(
                path,
                format!(
                    "tensor `{}` ({:?} {:?}) has inconsistent data offsets",
                    t.name, t.dtype, t.shape
                ),
            ));
        }
    }
    tensors.extend(listed);
    Ok(Shard {
        path: path.to_path_buf(),
        metadata: meta.metadata().clone().unwrap_or_default(),
        bytes,
    })
}

impl Safetensors {
    /// Opens a `.safetensors` file, or a directory holding either
    /// `model.safetensors.index.json` and its shards, or exactly one `*.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let files = if path.is_dir() {
            Self::directory_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut tensors = Vec::new();
        let mut shards = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            shards.push(open_shard(f, map_file(f)?, i, &mut tensors)?);
        }
        let st = Self::assemble(shards, tensors)?;
        let index_path = path.join(INDEX_FILE);
        if path.is_dir() && index_path.exists() {
            st.check_weight_map(&index_path)?;
        }
        Ok(st)
    }

    /// Parses one safetensors file already in memory; `path` only labels errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let mut tensors = Vec::new();
        let shard = open_shard(&path, Bytes::Owned(bytes), 0, &mut tensors)?;
        Self::assemble(vec![shard], tensors)
    }

    fn assemble(shards: Vec<Shard>, tensors: Vec<SafeTensorInfo>) -> Result<Self> {
        let mut index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if let Some(prev) = index.insert(t.name.clone(), i) {
                let other = &shards[tensors[prev].file].path;
                return Err(invalid(
                    &shards[t.file].path,
                    format!("tensor `{}` is also in {}", t.name, other.display()),
                ));
            }
        }
        Ok(Self {
            shards,
            tensors,
            index,
        })
    }

    fn directory_files(dir: &Path) -> Result<Vec<PathBuf>> {
        let index_path = dir.join(INDEX_FILE);
        if index_path.exists() {
            let index = read_index(&index_path)?;
            let mut files: Vec<&String> = index.weight_map.values().collect();
            files.sort();
            files.dedup();
            return files
                .into_iter()
                .map(|f| {
                    let p = Path::new(f);
                    let plain = p.components().count() == 1
                        && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
                    if plain {
                        Ok(dir.join(p))
                    } else {
                        Err(invalid(
                            &index_path,
                            format!("shard name `{f}` is not a plain file name"),
                        ))
                    }
                })
                .collect();
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        found.sort();
        match found.len() {
            1 => Ok(found),
            0 => Err(invalid(
                dir,
                "no .safetensors file in this directory".into(),
            )),
            _ => Err(invalid(
                dir,
                format!(
                    "{} .safetensors files but no {INDEX_FILE}; name the file to load",
                    found.len()
                ),
            )),
        }
    }

    fn check_weight_map(&self, index_path: &Path) -> Result<()> {
        let index = read_index(index_path)?;
        for (name, file) in &index.weight_map {
            let in_shard = self
                .index
                .get(name)
                .and_then(|&i| self.shards[self.tensors[i].file].path.file_name());
            if in_shard != Some(std::ffi::OsStr::new(file)) {
                return Err(invalid(
                    index_path,
                    format!("tensor `{name}` is not in shard {file}"),
                ));
            }
        }
        Ok(())
    }

    /// The files opened, in the order tensors are listed.
    pub fn paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// `__metadata__` of the first file (shards of one checkpoint carry the same).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.shards[0].metadata
    }

    /// All tensors, file by file in data order.
    pub fn tensors(&self) -> &[SafeTensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn require(&self, name: &str) -> Result<&SafeTensorInfo> {
        self.tensor(name).ok_or_else(|| FormatError::MissingTensor {
            path: self.shards[0].path.clone(),
            name: name.to_owned(),
        })
    }

    /// The raw little-endian bytes of a tensor, borrowed from the map.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.require(name)?;
        // The range was checked against the map when the file was opened.
        Ok(&self.shards[t.file].bytes[t.start..t.end])
    }

    /// A tensor decoded to f32 (F32, F16 or BF16), row-major.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        let ty = dtype_to_ggml(t.dtype).ok_or_else(|| {
            invalid(
                &self.shards[t.file].path,
                format!(
                    "tensor `{name}` has dtype {:?}; bora reads F32, F16 and BF16",
                    t.dtype
                ),
            )
        })?;
        let mut out = vec![0f32; t.n_elements()];
        quant::dequantize(ty, self.tensor_bytes(name)?, &mut out)?;
        Ok(out)
    }
}

fn read_index(path: &Path) -> Result<IndexJson> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("invalid index: {e}")))
}

/// A tensor to write: dtype, row-major shape and its little-endian bytes.
#[derive(Debug, Clone)]
pub struct TensorData<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl TensorData<'static> {
    /// Encodes f32 values as `dtype` (F32, F16 or BF16; BF16 rounds to nearest even as
    /// torch does).
    pub fn from_f32(dtype: Dtype, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let ty = dtype_to_ggml(dtype).ok_or_else(|| {
            invalid(
                Path::new("<safetensors writer>"),
                format!("cannot encode f32 as {dtype:?}"),
            )
        })?;
        Ok(Self {
            dtype,
            shape,
            data: Cow::Owned(quant::quantize(ty, values)?),
        })
    }
}

impl View for &TensorData<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes a safetensors file (temporary name, fsync, rename). Tensors are laid out as the
/// reference library does (by dtype, then name), so the same input gives the same bytes
/// as `safetensors.numpy.save_file`.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, TensorData<'_>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    for (name, t) in tensors {
        let expected = t
            .shape
            .iter()
            .try_fold(t.dtype.bitsize(), |a, &d| a.checked_mul(d))
            .map(|bits| bits.div_ceil(8));
        if expected != Some(t.data.len()) {
            return Err(invalid(
                path,
                format!(
                    "tensor `{name}` ({:?} {:?}) has {} bytes of data",
                    t.dtype,
                    t.shape,
                    t.data.len()
                ),
            ));
        }
    }
    let file = AtomicFile::create(path)?;
    file.write_via_path(|tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n, t)), metadata, tmp)
            .map_err(|e| invalid(path, format!("cannot serialize: {e}")))
    })
}
