//! safetensors reading and writing against files from the safetensors package
//! (`scripts/make_format_fixtures.py`), and malformed input.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bora_formats::safetensors::{write_safetensors, Dtype, Safetensors, TensorData};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("small.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn values(v: &Value) -> Vec<f32> {
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn reads_tensors_metadata_and_values() {
    let st = Safetensors::open(fixtures().join("small.safetensors")).unwrap();
    let want = expected();
    let meta: HashMap<String, String> = serde_json::from_value(want["metadata"].clone()).unwrap();
    assert_eq!(*st.metadata(), meta);
    let tensors = want["tensors"].as_object().unwrap();
    assert_eq!(st.tensors().len(), tensors.len());
    for (name, t) in tensors {
        let info = st.tensor(name).unwrap();
        assert_eq!(format!("{:?}", info.dtype), t["dtype"].as_str().unwrap());
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape, shape);
        let got = st.tensor_f32(name).unwrap();
        let want = values(t);
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{name}"
        );
    }
    assert!(st
        .tensor_bytes("nope")
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

#[test]
fn sharded_directory_reads_all_shards() {
    let dir = fixtures().join("sharded");
    let st = Safetensors::open(&dir).unwrap();
    assert_eq!(st.paths().len(), 2);
    // Data order: shard by shard; within a shard the writer put F32 before F16.
    let names: Vec<&str> = st.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["x.weight", "z.weight", "y.weight"]);
    let want = expected();
    assert_eq!(
        st.tensor_f32("x.weight").unwrap(),
        values(&want["tensors"]["a.f32"])
    );
    assert_eq!(
        st.tensor_f32("y.weight").unwrap(),
        values(&want["tensors"]["model.layers.0.b.f16"])
    );
    assert_eq!(
        st.tensor_f32("z.weight").unwrap(),
        values(&want["tensors"]["a.f32"])[..4]
    );
}

#[test]
fn writer_reproduces_reference_bytes() {
    let src = fixtures().join("sharded/model-00002-of-00002.safetensors");
    let st = Safetensors::open(&src).unwrap();
    let tensors: Vec<(String, TensorData)> = st
        .tensors()
        .iter()
        .map(|t| {
            let data = Cow::Borrowed(st.tensor_bytes(&t.name).unwrap());
            (
                t.name.clone(),
                TensorData {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data,
                },
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.safetensors");
    write_safetensors(&dest, &tensors, Some(st.metadata().clone())).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
fn f32_round_trip_through_each_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rt.safetensors");
    let x: Vec<f32> = (0..24).map(|i| i as f32 * 0.37 - 4.0).collect();
    let tensors: Vec<(String, TensorData)> = [Dtype::F32, Dtype::F16, Dtype::BF16]
        .into_iter()
        .map(|d| {
            (
                format!("{d:?}"),
                TensorData::from_f32(d, vec![4, 6], &x).unwrap(),
            )
        })
        .collect();
    write_safetensors(&dest, &tensors, None).unwrap();
    let st = Safetensors::open(&dest).unwrap();
    assert_eq!(st.tensor_f32("F32").unwrap(), x);
    for (name, tol) in [("F16", 4e-3), ("BF16", 3e-2)] {
        for (g, w) in st.tensor_f32(name).unwrap().iter().zip(&x) {
            assert!(
                (g - w).abs() <= tol * w.abs().max(1.0),
                "{name}: {g} vs {w}"
            );
        }
    }
    let bad = TensorData {
        dtype: Dtype::F32,
        shape: vec![2, 2],
        data: Cow::Owned(vec![0; 15]),
    };
    let e = write_safetensors(
        dir.path().join("bad.safetensors"),
        &[("w".into(), bad)],
        None,
    );
    assert!(e.unwrap_err().to_string().contains("`w`"));
    assert!(!dir.path().join("bad.safetensors").exists());
}

fn open_err(path: &Path) -> String {
    let e = Safetensors::open(path).unwrap_err().to_string();
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(name), "error does not name {name}: {e}");
    e
}

#[test]
fn malformed_files_are_errors_naming_the_file() {
    let full = std::fs::read(fixtures().join("small.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    for len in 0..full.len() {
        std::fs::write(&p, &full[..len]).unwrap();
        open_err(&p);
    }
    let mut huge = full.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &huge).unwrap();
    open_err(&p);
    let mut corrupt = full.clone();
    corrupt[8] = b'[';
    std::fs::write(&p, &corrupt).unwrap();
    open_err(&p);
    // Shape claims more elements than its data offsets hold.
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&full[8..8 + n]).unwrap();
    let forged = header.replacen("[3,4]", "[4,4]", 1);
    assert_ne!(forged, header);
    let mut bad = full[..8].to_vec();
    bad.extend_from_slice(forged.as_bytes());
    bad.extend_from_slice(&full[8 + n..]);
    std::fs::write(&p, &bad).unwrap();
    open_err(&p);
}

#[test]
fn bad_directories() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("no .safetensors"), "{e}");
    let small = std::fs::read(fixtures().join("small.safetensors")).unwrap();
    std::fs::write(dir.path().join("a.safetensors"), &small).unwrap();
    std::fs::write(dir.path().join("b.safetensors"), &small).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("model.safetensors.index.json"), "{e}");

    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, r#"{"weight_map":{"a.f32":"../a.safetensors"}}"#).unwrap();
    let e = Safetensors::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a plain file name"), "{e}");
    std::fs::write(&index, r#"{"weight_map":{"zzz":"a.safetensors"}}"#).unwrap();
    let e = Safetensors::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("`zzz` is not in shard a.safetensors"), "{e}");
    std::fs::write(
        &index,
        r#"{"weight_map":{"a.f32":"a.safetensors","c.bf16":"b.safetensors"}}"#,
    )
    .unwrap();
    let e = Safetensors::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("is also in"), "{e}");
    std::fs::write(&index, "{").unwrap();
    let e = Safetensors::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("index.json") && e.contains("invalid index"),
        "{e}"
    );
}

#[test]
fn in_memory_parse_matches_file_and_survives_corruption() {
    let full = std::fs::read(fixtures().join("small.safetensors")).unwrap();
    let st = Safetensors::from_bytes("mem.safetensors", full.clone()).unwrap();
    let file = Safetensors::open(fixtures().join("small.safetensors")).unwrap();
    assert_eq!(st.tensors(), file.tensors());
    assert_eq!(
        st.tensor_f32("a.f32").unwrap(),
        file.tensor_f32("a.f32").unwrap()
    );
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut b = full.clone();
        for _ in 0..1 + next() % 3 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        match Safetensors::from_bytes("fuzz.safetensors", b) {
            Ok(st) => {
                for t in st.tensors() {
                    st.tensor_f32(&t.name).ok();
                }
            }
            Err(e) => assert!(e.to_string().contains("fuzz.safetensors"), "{e}"),
        }
    }
}
