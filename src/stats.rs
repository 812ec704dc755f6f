//! Counters of what the plugin did: one `dhsa-stats {...}` line per backend when it is freed
//! (`DHSA_STATS=1`), and a process-wide total the runner reads.

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// the plugin device whose backend counted these (DHSA, DHSA-CUDA<i>); empty for totals
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// FA ops computed
    pub ops: u64,
    /// of those, computed sparsely (a selection was made)
    pub sparse_ops: u64,
    /// of those, computed over every visible key
    pub dense_ops: u64,
    /// distinct FA ops offered to the plugin and declined (llama.cpp computed them)
    pub declined: u64,
    /// (query, head, key) triples whose mask entry is finite
    pub keys_visible: u64,
    /// (query, head, key) triples attended
    pub keys_attended: u64,
    pub select_ms: f64,
    pub attn_ms: f64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.ops += o.ops;
        self.sparse_ops += o.sparse_ops;
        self.dense_ops += o.dense_ops;
        self.keys_visible += o.keys_visible;
        self.keys_attended += o.keys_attended;
        self.select_ms += o.select_ms;
        self.attn_ms += o.attn_ms;
    }

    /// Fraction of the visible keys that were attended (1 for dense).
    pub fn kept(&self) -> f64 {
        if self.keys_visible == 0 { 1.0 } else { self.keys_attended as f64 / self.keys_visible as f64 }
    }

    /// The line written to stderr.
    pub fn line(&self) -> String {
        format!(
            "dhsa-stats {{\"device\":{},\"ops\":{},\"sparse_ops\":{},\"dense_ops\":{},\"declined\":{},\"keys_visible\":{},\"keys_attended\":{},\"select_ms\":{:.3},\"attn_ms\":{:.3},\"kept\":{:.5}}}",
            serde_json::to_string(&self.device).unwrap_or_default(),
            self.ops,
            self.sparse_ops,
            self.dense_ops,
            self.declined,
            self.keys_visible,
            self.keys_attended,
            self.select_ms,
            self.attn_ms,
            self.kept()
        )
    }

    /// Parses a `dhsa-stats {...}` line (tests read the plugin's stderr with this). The record
    /// may follow other text on the same line: llama.cpp's log thread writes to the same stderr
    /// and can leave a line unfinished when the plugin writes its own.
    pub fn parse_line(line: &str) -> Option<Stats> {
        let at = line.find("dhsa-stats {")?;
        // the first JSON value after the marker; text after it is someone else's
        serde_json::Deserializer::from_str(&line[at + "dhsa-stats ".len()..]).into_iter().next()?.ok()
    }
}

/// Writes one line to stderr with a single write: `eprintln!` writes each formatted piece
/// separately, and llama.cpp's log thread, writing to the same stderr, can land in between.
pub fn write_line(line: &str) {
    use std::io::Write;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().lock().write_all(buf.as_bytes());
}

static TOTAL: Mutex<Stats> = Mutex::new(Stats {
    device: String::new(),
    ops: 0,
    sparse_ops: 0,
    dense_ops: 0,
    declined: 0,
    keys_visible: 0,
    keys_attended: 0,
    select_ms: 0.0,
    attn_ms: 0.0,
});

static DECLINED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Adds one op's counters to the process total.
pub fn add_total(s: &Stats) {
    TOTAL.lock().unwrap_or_else(|e| e.into_inner()).add(s);
}

/// The process total since the last `reset_total`.
pub fn total() -> Stats {
    let mut t = TOTAL.lock().unwrap_or_else(|e| e.into_inner()).clone();
    t.declined = declined();
    t
}

pub fn reset_total() {
    *TOTAL.lock().unwrap_or_else(|e| e.into_inner()) = Stats::default();
    *DECLINED.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Records a declined op by identity (the scheduler asks about the same node several times);
/// true the first time this op is seen.
pub fn note_declined(key: String) -> bool {
    DECLINED.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(key)
}

pub fn declined() -> u64 {
    DECLINED.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |s| s.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn a_stats_line_parses_after_other_text_and_before_more() {
        let s = Stats {
            device: "DHSA {a}".into(),
            ops: 7,
            dense_ops: 7,
            keys_visible: 10,
            keys_attended: 10,
            ..Default::default()
        };
        let line = s.line();
        assert_eq!(Stats::parse_line(&line), Some(s.clone()));
        assert_eq!(Stats::parse_line(&format!("0.11.97 I common_perf_print: {line}")), Some(s.clone()));
        assert_eq!(Stats::parse_line(&format!("{line}0.11.97 I llama_perf")), Some(s));
        assert_eq!(Stats::parse_line("dhsa-stats {\"ops\":"), None);
        assert_eq!(Stats::parse_line("no record here"), None);
    }
}
