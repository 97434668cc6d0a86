//! Any bytes given to the GGUF reader must yield a file or an error, never a panic, and
//! whatever it accepts must be readable through every accessor.
#![no_main]

use bora_formats::arch::ArchConfig;
use bora_formats::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    for (key, _) in file.metadata() {
        let _ = file.get_u64(key);
        let _ = file.get_f32(key);
        let _ = file.get_str(key);
        let _ = file.get_str_array(key);
        let _ = file.get_i32_array(key);
    }
    for info in file.tensors() {
        let _ = file.tensor_f32(info);
    }
    let _ = ArchConfig::from_gguf(&file);
});
