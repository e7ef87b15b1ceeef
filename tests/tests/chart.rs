//! The chart's README documents every value in values.yaml (and nothing that is not there).

use std::path::Path;

fn leaves(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
                // Resource blocks are documented as one value.
                if key == "resources" {
                    out.push(path);
                } else {
                    leaves(&path, v, out);
                }
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_value_is_documented() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).expect("values")).expect("yaml");
    let readme = std::fs::read_to_string(chart.join("README.md")).expect("README");
    let documented: Vec<&str> = readme.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next()).collect();
    let mut keys = Vec::new();
    leaves("", &values, &mut keys);
    for key in &keys {
        assert!(documented.contains(&key.as_str()), "values.yaml key {key} is not in charts/ferrolb/README.md");
    }
    for key in &documented {
        assert!(keys.iter().any(|k| k == key), "README documents {key}, which values.yaml does not have");
    }
}
