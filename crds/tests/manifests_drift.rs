//! The committed CRD manifests are exactly what the types generate.

use std::path::Path;

#[test]
fn committed_manifests_match_the_types() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut stale = Vec::new();
    for (file, generated) in printfleet_crds::manifests::all() {
        let generated = generated.unwrap_or_else(|error| panic!("{file}: {error}"));
        let committed = std::fs::read_to_string(directory.join(file)).unwrap_or_default();
        if committed != generated {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} in crds/manifests/ differ from the types; regenerate with \
         `cargo run -p printfleet-crds --bin crdgen` and commit the result"
    );
}

#[test]
fn printer_columns_are_declared() {
    let columns = |yaml: &str| -> Vec<String> {
        let crd: serde_yaml::Value = serde_yaml::from_str(yaml).expect("manifest is YAML");
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_sequence()
            .expect("columns")
            .iter()
            .map(|column| column["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let manifests: Vec<String> = printfleet_crds::manifests::all()
        .into_iter()
        .map(|(file, yaml)| yaml.unwrap_or_else(|error| panic!("{file}: {error}")))
        .collect();
    assert_eq!(columns(&manifests[0]), ["URI", "State", "Ready", "Age"]);
    assert_eq!(
        columns(&manifests[1]),
        ["Printers", "Shard", "Depth", "Ready", "Age"]
    );
    assert_eq!(columns(&manifests[2]), ["Currency", "Queues", "Age"]);
}
