//! Any bytes given to the safetensors reader must yield a checkpoint or an error, never a
//! panic, and every tensor it lists must be readable.
#![no_main]

use bora_formats::safetensors::Safetensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = Safetensors::from_bytes("fuzz.safetensors", data.to_vec()) else {
        return;
    };
    for t in st.tensors() {
        let _ = st.tensor_bytes(&t.name);
        let _ = st.tensor_f32(&t.name);
    }
});
