//! Helpers shared by the end-to-end tests: run outputs with the fields that differ between any two
//! runs (wall-clock times, rates, memory) removed, so that resumed and uninterrupted runs compare
//! exactly.

use std::path::Path;

use serde_json::Value;

/// Removes, recursively, every key containing `seconds` or ending in `_s`, and `steps_per_second`
/// and `peak_memory_mib`.
pub fn strip_time(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| {
                !k.contains("seconds")
                    && !k.ends_with("_s")
                    && k != "steps_per_second"
                    && k != "peak_memory_mib"
            });
            m.values_mut().for_each(strip_time);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_time),
        _ => {}
    }
}

/// Every record of a run's `metrics.jsonl`, without timing fields.
pub fn metrics_without_time(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            strip_time(&mut v);
            v
        })
        .collect()
}

/// A JSON file (`summary.json`, `config.json`) without timing fields.
pub fn json_without_time(path: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    strip_time(&mut v);
    v
}
