//! Malformed GGUF input: every case must be a clear error (naming the file) and never a
//! panic, a hang or a huge allocation.

use std::path::PathBuf;

use bora_formats::gguf::GgufFile;
use bora_formats::FormatError;

fn all_types() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/all_types.gguf");
    std::fs::read(path).unwrap()
}

/// Builds GGUF bytes field by field.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Bytes::default()
            .raw(b"GGUF")
            .u32(3)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A tensor info: name, dims, ggml type id, data offset.
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut b = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            b = b.u64(d);
        }
        b.u32(ty).u64(offset)
    }
    fn pad_to(mut self, n: usize) -> Self {
        self.0.resize(n, 0);
        self
    }
}

fn error_of(bytes: Vec<u8>) -> String {
    let e = GgufFile::from_bytes("bad.gguf", bytes).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bad.gguf"),
        "error does not name the file: {msg}"
    );
    msg
}

#[test]
fn every_truncation_is_an_error() {
    let full = all_types();
    let file = GgufFile::from_bytes("ok.gguf", full.clone()).unwrap();
    // gguf-py pads after the last tensor too; only cutting into real data must fail.
    let data_end = file
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap();
    let data_end = (file.data_offset() + data_end) as usize;
    for len in 0..data_end {
        error_of(full[..len].to_vec());
    }
    for len in data_end..=full.len() {
        assert!(GgufFile::from_bytes("ok.gguf", full[..len].to_vec()).is_ok());
    }
}

#[test]
fn random_corruption_never_panics() {
    let full = all_types();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        if let Ok(f) = GgufFile::from_bytes("fuzz.gguf", b) {
            for t in f.tensors() {
                f.tensor_f32(t).ok();
            }
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let e = error_of(Bytes::default().raw(b"GGUS").u32(3).u64(0).u64(0).0);
    assert!(e.contains("not a GGUF file"), "{e}");
    for v in [1, 4] {
        let e = error_of(Bytes::default().raw(b"GGUF").u32(v).u64(0).u64(0).0);
        assert!(e.contains(&format!("version {v}")), "{e}");
    }
    let ok = Bytes::default().raw(b"GGUF").u32(2).u64(0).u64(0).0;
    assert_eq!(GgufFile::from_bytes("v2.gguf", ok).unwrap().version(), 2);
}

#[test]
fn huge_counts_and_lengths_are_refused_before_allocating() {
    let e = error_of(Bytes::header(1 << 60, 0).0);
    assert!(e.contains("tensor count") && e.contains("offset 8"), "{e}");
    let e = error_of(Bytes::header(0, u64::MAX).0);
    assert!(e.contains("metadata count"), "{e}");
    let e = error_of(Bytes::header(0, 1).u64(1 << 40).raw(&[b'a'; 64]).0);
    assert!(
        e.contains("metadata key") && e.contains("1099511627776"),
        "{e}"
    );
    let e = error_of(Bytes::header(0, 1).str("k").u32(8).u64(1 << 40).0);
    assert!(e.contains("`k`") || e.contains("k needs"), "{e}");
    let e = error_of(Bytes::header(0, 1).str("arr").u32(9).u32(0).u64(1 << 60).0);
    assert!(e.contains("arr is 1152921504606846976"), "{e}");
    let e = error_of(
        Bytes::header(0, 1)
            .str("arr")
            .u32(9)
            .u32(8)
            .u64(u64::MAX / 4)
            .0,
    );
    assert!(e.contains("remaining bytes"), "{e}");
}

#[test]
fn deep_nesting_and_bad_value_types() {
    let mut b = Bytes::header(0, 1).str("deep").u32(9);
    for _ in 0..10_000 {
        b = b.u32(9).u64(1);
    }
    let e = error_of(b.u32(0).u64(0).0);
    assert!(e.contains("nested deeper"), "{e}");
    let e = error_of(Bytes::header(0, 1).str("k").u32(13).u32(0).0);
    assert!(e.contains("unknown value type 13"), "{e}");
    let e = error_of(Bytes::header(0, 1).str("k").u32(7).raw(&[2]).0);
    assert!(e.contains("bool byte is 2"), "{e}");
    let e = error_of(Bytes::header(0, 1).str("k").u32(8).str("\u{1F642}").0[..47].to_vec());
    assert!(e.contains("truncated"), "{e}");
    let e = error_of(
        Bytes::header(0, 1)
            .str("k")
            .u32(8)
            .u64(2)
            .raw(&[0xff, 0xfe])
            .0,
    );
    assert!(e.contains("UTF-8"), "{e}");
    let e = error_of(
        Bytes::header(0, 2)
            .str("k")
            .u32(4)
            .u32(1)
            .str("k")
            .u32(4)
            .u32(1)
            .0,
    );
    assert!(e.contains("duplicate metadata key `k`"), "{e}");
    let e = error_of(
        Bytes::header(0, 1)
            .str("general.alignment")
            .u32(4)
            .u32(48)
            .0,
    );
    assert!(e.contains("power of two"), "{e}");
}

#[test]
fn bad_tensor_infos() {
    // header 24 + tensor info; data starts at 64 (alignment 32), 128 bytes of data.
    let one = |dims: &[u64], ty: u32, offset: u64| {
        Bytes::header(1, 0)
            .tensor("w", dims, ty, offset)
            .pad_to(64 + 128)
            .0
    };
    assert!(GgufFile::from_bytes("ok.gguf", one(&[32], 0, 0)).is_ok());
    let e = error_of(one(&[32], 0, 8));
    assert!(e.contains("not a multiple of the alignment 32"), "{e}");
    let e = error_of(one(&[32], 0, 64));
    assert!(e.contains("extends past the end"), "{e}");
    let e = error_of(one(&[32], 0, u64::MAX - 31));
    assert!(e.contains("extends past the end"), "{e}");
    let e = error_of(one(&[1 << 40, 1 << 40], 0, 0));
    assert!(e.contains("overflow"), "{e}");
    let e = error_of(one(&[1 << 30, 1 << 30], 0, 0));
    assert!(e.contains("extends past the end"), "{e}");
    let e = error_of(one(&[33], 8, 0));
    assert!(
        e.contains("not a multiple of the Q8_0 block size 32"),
        "{e}"
    );
    let e = error_of(one(&[32], 5, 0));
    assert!(e.contains("unknown ggml type 5"), "{e}");
    let e = error_of(one(&[1, 1, 1, 1, 1], 0, 0));
    assert!(e.contains("5 dims"), "{e}");
    let two = Bytes::header(2, 0)
        .tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .pad_to(256)
        .0;
    let e = error_of(two);
    assert!(e.contains("duplicate tensor name `w`"), "{e}");
}

#[test]
fn forged_tensor_info_is_bounds_checked() {
    let file = GgufFile::from_bytes("ok.gguf", all_types()).unwrap();
    let mut info = file.tensors()[0].clone();
    info.offset = u64::MAX - 3;
    assert!(matches!(
        file.tensor_bytes(&info),
        Err(FormatError::Invalid { .. })
    ));
    let mut info = file.tensors()[0].clone();
    info.n_bytes += 1;
    assert!(
        file.tensor_bytes(&info).is_err(),
        "n_bytes must agree with dims and type"
    );
    let mut info = file.tensors()[0].clone();
    info.dims = vec![u64::MAX, 2];
    assert!(file.tensor_f32(&info).is_err());
}

#[test]
fn missing_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = GgufFile::open(dir.path().join("none.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.gguf"), "{e}");
    std::fs::write(dir.path().join("empty.gguf"), b"").unwrap();
    let e = GgufFile::open(dir.path().join("empty.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.gguf") && e.contains("magic"), "{e}");
}
