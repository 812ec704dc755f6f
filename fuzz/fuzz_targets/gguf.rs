//! GGUF pre-validation (dhsa's own reader, run before llama.cpp sees a model): any bytes give a
//! header or an error, never a panic, an abort or an allocation the file cannot back; a header that
//! passes has every tensor's data inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ggml_dhsa::gguf::check_bytes("fuzz.gguf", data) {
        Ok(h) => {
            assert!(h.data_end().unwrap() <= data.len() as u64);
            assert!(h.data_offset <= data.len() as u64 || h.tensors.is_empty());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
