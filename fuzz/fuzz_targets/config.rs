//! Configuration parsing: any set of DHSA_* values gives a Config or a ConfigError naming the
//! variable, never a panic; a Config that parses validates, and re-parsing what it prints gives it
//! back.
#![no_main]

use ggml_dhsa::config::{Config, KNOBS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // lines "VAR=value" (VAR may be given as an index into the knob table, to reach them all)
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let k = k
                .trim()
                .parse::<usize>()
                .ok()
                .and_then(|i| KNOBS.get(i % KNOBS.len()))
                .map_or(k.to_string(), |kn| kn.var.to_string());
            (k, v.to_string())
        })
        .collect();
    match Config::from_lookup(|var| pairs.iter().rev().find(|(k, _)| k == var).map(|(_, v)| v.clone())) {
        Ok(c) => {
            assert!(c.validate().is_ok());
            let again = Config::from_lookup(|var| c.get(var)).expect("a printed config parses");
            assert_eq!(again, c);
        }
        Err(e) => assert!(e.0.starts_with("invalid DHSA_"), "{e}"),
    }
});
