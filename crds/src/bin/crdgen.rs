//! Writes the CRDs generated from the types, as chart templates, into `charts/ferrolb/templates/crds/` (or the
//! directory given).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/templates/crds"));
    std::fs::create_dir_all(&dir)?;
    let files = ferrolb_crds::crd_files().map_err(std::io::Error::other)?;
    for (name, yaml) in files {
        let path = dir.join(name);
        std::fs::write(&path, ferrolb_crds::chart_template(&yaml))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
