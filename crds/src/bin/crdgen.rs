//! Writes the CRD manifests generated from the API types to `crds/manifests/`.
//!
//! `cargo run -p printfleet-crds --bin crdgen` regenerates them after a change to the types.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let result = std::fs::create_dir_all(&directory)
        .map_err(|error| error.to_string())
        .and_then(|()| {
            printfleet_crds::manifests::all()
                .into_iter()
                .try_for_each(|(file, yaml)| {
                    let yaml = yaml.map_err(|error| format!("{file}: {error}"))?;
                    let path = directory.join(file);
                    std::fs::write(&path, yaml)
                        .map_err(|error| format!("{}: {error}", path.display()))?;
                    println!("wrote {}", path.display());
                    Ok(())
                })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("crdgen: {error}");
            ExitCode::FAILURE
        }
    }
}
