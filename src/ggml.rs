//! Small safe queries of the ggml backend registry: versions and devices.

use ggml_sys as sys;
use std::ffi::CStr;

fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings with static or registry lifetime.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// ggml's version and commit as the loaded libggml-base reports them.
pub fn ggml_version() -> (String, String) {
    // SAFETY: pure queries returning static strings.
    unsafe { (cstr(sys::ggml_version()), cstr(sys::ggml_commit())) }
}

/// llama.cpp's version string (libllama).
pub fn llama_version() -> String {
    // SAFETY: pure query returning a static string.
    unsafe { cstr(sys::llama_version()) }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub description: String,
    pub kind: &'static str,
    pub free_bytes: usize,
    pub total_bytes: usize,
}

pub fn kind_name(t: sys::ggml_backend_dev_type) -> &'static str {
    match t {
        sys::GGML_BACKEND_DEVICE_TYPE_CPU => "CPU",
        sys::GGML_BACKEND_DEVICE_TYPE_GPU => "GPU",
        sys::GGML_BACKEND_DEVICE_TYPE_IGPU => "IGPU",
        sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => "ACCEL",
        sys::GGML_BACKEND_DEVICE_TYPE_META => "META",
        _ => "?",
    }
}

/// Every registered device, in registry order.
pub fn devices() -> Vec<DeviceInfo> {
    let mut out = vec![];
    // SAFETY: the registry is initialised (llama::init); indices are below the count; each device
    // pointer stays valid for the life of the process.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let d = sys::ggml_backend_dev_get(i);
            let (mut free, mut total) = (0usize, 0usize);
            sys::ggml_backend_dev_memory(d, &mut free, &mut total);
            out.push(DeviceInfo {
                name: cstr(sys::ggml_backend_dev_name(d)),
                description: cstr(sys::ggml_backend_dev_description(d)),
                kind: kind_name(sys::ggml_backend_dev_type(d)),
                free_bytes: free,
                total_bytes: total,
            });
        }
    }
    out
}

/// The device pointer with this name, if registered.
pub fn device_by_name(name: &str) -> Option<sys::ggml_backend_dev_t> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: NUL-terminated name; returns NULL or a registry-owned device.
    let d = unsafe { sys::ggml_backend_dev_by_name(c.as_ptr()) };
    (!d.is_null()).then_some(d)
}
