//! The GGUF reader and writer against files written and read by gguf-py
//! (`scripts/make_format_fixtures.py`), and against the default model.

use std::path::{Path, PathBuf};

use bora_formats::cache;
use bora_formats::gguf::{GgufFile, GgufValue, GgufValueType, GgufWriter};
use bora_formats::quant::GgmlType;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn value_type(name: &str) -> GgufValueType {
    (0..13)
        .filter_map(GgufValueType::from_id)
        .find(|t| t.to_string() == name)
        .unwrap_or_else(|| panic!("type {name}"))
}

/// The fixture's `{type, value}` / `{type: array, elem, items}` form as a GgufValue.
fn expected_value(v: &Value) -> GgufValue {
    let int = |v: &Value| {
        v.as_i64()
            .map(i128::from)
            .or(v.as_u64().map(i128::from))
            .unwrap()
    };
    let x = &v["value"];
    match v["type"].as_str().unwrap() {
        "u8" => GgufValue::U8(int(x) as u8),
        "i8" => GgufValue::I8(int(x) as i8),
        "u16" => GgufValue::U16(int(x) as u16),
        "i16" => GgufValue::I16(int(x) as i16),
        "u32" => GgufValue::U32(int(x) as u32),
        "i32" => GgufValue::I32(int(x) as i32),
        "u64" => GgufValue::U64(int(x) as u64),
        "i64" => GgufValue::I64(int(x) as i64),
        "f32" => GgufValue::F32(x.as_f64().unwrap() as f32),
        "f64" => GgufValue::F64(x.as_f64().unwrap()),
        "bool" => GgufValue::Bool(x.as_bool().unwrap()),
        "string" => GgufValue::String(x.as_str().unwrap().to_owned()),
        "array" => GgufValue::Array(
            value_type(v["elem"].as_str().unwrap()),
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(expected_value)
                .collect(),
        ),
        t => panic!("unknown type {t}"),
    }
}

fn check_tensor(file: &GgufFile, t: &Value) -> Vec<f32> {
    let name = t["name"].as_str().unwrap();
    let info = file.tensor(name).unwrap_or_else(|| panic!("tensor {name}"));
    assert_eq!(info.ty.name(), t["type"].as_str().unwrap(), "{name}");
    let dims: Vec<u64> = t["dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    assert_eq!(info.dims, dims, "{name}");
    assert_eq!(info.n_bytes, t["n_bytes"].as_u64().unwrap(), "{name}");
    assert_eq!(
        file.data_offset() + info.offset,
        t["file_offset"].as_u64().unwrap(),
        "{name}"
    );
    file.tensor_f32(info).unwrap()
}

#[test]
fn reads_every_value_type_and_tensor_gguf_py_wrote() {
    let path = fixtures().join("all_types.gguf");
    let want = json(&fixtures().join("all_types.json"));
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), want["alignment"].as_u64().unwrap());
    assert_eq!(file.data_offset(), want["data_offset"].as_u64().unwrap());

    let meta = want["metadata"].as_array().unwrap();
    assert_eq!(file.metadata().len(), meta.len());
    for ((key, value), m) in file.metadata().iter().zip(meta) {
        assert_eq!(key, m["key"].as_str().unwrap());
        assert_eq!(*value, expected_value(m), "{key}");
    }
    assert_eq!(file.get_u64("t.u8").unwrap(), 255);
    assert_eq!(file.get_u64("t.u64").unwrap(), (1 << 63) + 5);
    assert!(
        file.get_u64("t.i8").is_err(),
        "negative count must not convert"
    );
    assert_eq!(file.get_str("t.string").unwrap(), "héllo, wörld ▁ 🙂\n");
    assert!(!file.get_bool("t.bool.false").unwrap());
    assert_eq!(file.get_i32_array("t.arr.u8").unwrap(), vec![0, 1, 255]);
    assert_eq!(
        file.get_str_array("t.arr.string").unwrap(),
        vec!["a", "", "ĠĠ", "<0x0A>"]
    );
    assert_eq!(
        file.get_f32_array("t.arr.f32").unwrap(),
        vec![0.5, -1.25, 3.0e38]
    );

    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    for t in tensors {
        let got = check_tensor(&file, t);
        let vals: Vec<f32> = t["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), vals.len());
        for (g, w) in got.iter().zip(&vals) {
            assert_eq!(g.to_bits(), w.to_bits(), "{}", t["name"]);
        }
    }
}

#[test]
fn typed_getters_name_the_key_and_file() {
    let file = GgufFile::open(fixtures().join("all_types.gguf")).unwrap();
    let e = file.get_str("t.u32").unwrap_err().to_string();
    assert!(
        e.contains("all_types.gguf") && e.contains("t.u32") && e.contains("u32"),
        "{e}"
    );
    let e = file.get_f32("no.such.key").unwrap_err().to_string();
    assert!(
        e.contains("all_types.gguf") && e.contains("no.such.key"),
        "{e}"
    );
    let e = file.get_str_array("t.nested.i32").unwrap_err().to_string();
    assert!(
        e.contains("t.nested.i32") && e.contains("array of 3 array"),
        "{e}"
    );
    assert!(file.opt_f32("no.such.key").unwrap().is_none());
    assert!(file
        .require_tensor("nope")
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

/// Rewrites a file through GgufWriter from what the reader saw.
fn rewrite(file: &GgufFile, dest: &Path) {
    let mut w = GgufWriter::new();
    for (k, v) in file.metadata() {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    for t in file.tensors() {
        w.add_tensor_info(t.name.clone(), &t.dims, t.ty).unwrap();
    }
    let mut out = w.create(dest).unwrap();
    for t in file.tensors() {
        out.write_tensor(&t.name, file.tensor_bytes(t).unwrap())
            .unwrap();
    }
    out.finish().unwrap();
}

#[test]
fn writer_reproduces_gguf_py_file_byte_for_byte() {
    let path = fixtures().join("all_types.gguf");
    let file = GgufFile::open(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("copy.gguf");
    rewrite(&file, &dest);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["copy.gguf"], "no temporary file left behind");
}

#[test]
fn writer_rejects_inconsistent_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata("a", 1u32).unwrap();
    assert!(w.add_metadata("a", 2u32).is_err());
    assert!(w.add_metadata("general.alignment", 24u32).is_err());
    assert!(w.add_tensor_info("q", &[33, 2], GgmlType::Q8_0).is_err());
    w.add_tensor_info("t", &[32, 2], GgmlType::Q8_0).unwrap();
    assert!(w.add_tensor_info("t", &[32], GgmlType::F32).is_err());
    w.add_metadata(
        "bad",
        GgufValue::Array(GgufValueType::U8, vec![GgufValue::U32(1)]),
    )
    .unwrap();
    assert!(w.create(dir.path().join("bad.gguf")).is_err());

    let mut w = GgufWriter::new();
    w.add_tensor_info("t", &[32, 2], GgmlType::Q8_0).unwrap();
    let mut out = w.create(dir.path().join("x.gguf")).unwrap();
    assert!(out.write_tensor("u", &[0; 68]).is_err());
    assert!(out.write_tensor("t", &[0; 67]).is_err());
    assert!(out.finish().is_err());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "unfinished file removed"
    );
}

#[test]
fn default_model_matches_gguf_py() {
    let path = cache::fetched_default_model().unwrap();
    let facts = json(&fixtures().join("smollm2_facts.json"));
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        facts["file_len"].as_u64().unwrap()
    );
    assert_eq!(file.alignment(), facts["alignment"].as_u64().unwrap());
    assert_eq!(file.data_offset(), facts["data_offset"].as_u64().unwrap());

    let meta = facts["metadata"].as_array().unwrap();
    assert_eq!(file.metadata().len(), meta.len());
    for ((key, value), m) in file.metadata().iter().zip(meta) {
        assert_eq!(key, m["key"].as_str().unwrap());
        assert_eq!(
            value.value_type().to_string(),
            m["type"].as_str().unwrap(),
            "{key}"
        );
        match value {
            GgufValue::Array(elem, items) => {
                assert_eq!(elem.to_string(), m["elem"].as_str().unwrap(), "{key}");
                assert_eq!(items.len() as u64, m["len"].as_u64().unwrap(), "{key}");
                let first = m["first"].as_array().unwrap();
                let as_json = |v: &GgufValue| match v {
                    GgufValue::String(s) => Value::from(s.clone()),
                    v => Value::from(v.as_i64().unwrap()),
                };
                for (g, w) in items.iter().zip(first) {
                    assert_eq!(as_json(g), *w, "{key}");
                }
                assert_eq!(as_json(items.last().unwrap()), m["last"], "{key}");
            }
            GgufValue::String(s) => assert_eq!(s, m["value"].as_str().unwrap(), "{key}"),
            GgufValue::F32(x) => assert_eq!(*x, m["value"].as_f64().unwrap() as f32, "{key}"),
            GgufValue::Bool(b) => assert_eq!(*b, m["value"].as_bool().unwrap(), "{key}"),
            v => assert_eq!(v.as_u64().unwrap(), m["value"].as_u64().unwrap(), "{key}"),
        }
    }
    assert_eq!(file.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100000.0);

    let tensors = facts["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    for (info, t) in file.tensors().iter().zip(tensors) {
        assert_eq!(info.name, t["name"].as_str().unwrap(), "file order");
        assert_eq!(info.ty.name(), t["type"].as_str().unwrap());
        let dims: Vec<u64> = t["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims, dims);
        assert_eq!(info.n_bytes, t["n_bytes"].as_u64().unwrap());
        assert_eq!(
            file.data_offset() + info.offset,
            t["file_offset"].as_u64().unwrap()
        );
    }

    let emb = file.require_tensor("token_embd.weight").unwrap();
    let row_len = emb.row_len() as usize;
    let row_bytes = emb.ty.row_bytes(row_len).unwrap();
    let data = file.tensor_bytes(emb).unwrap();
    let rows = facts["token_embd_rows"].as_array().unwrap();
    let values = facts["token_embd_values"].as_array().unwrap();
    for (r, want) in rows.iter().zip(values) {
        let r = r.as_u64().unwrap() as usize;
        let mut got = vec![0f32; row_len];
        bora_formats::quant::dequantize(emb.ty, &data[r * row_bytes..][..row_bytes], &mut got)
            .unwrap();
        for (g, w) in got.iter().zip(want.as_array().unwrap()) {
            assert_eq!(*g, w.as_f64().unwrap() as f32, "token_embd row {r}");
        }
    }
}
