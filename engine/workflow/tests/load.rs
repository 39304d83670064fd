//! Loading from disk: relative paths resolve against the workflow file's directory.

use shiphat_workflow::{Error, PluginRef, StepKind, load};

#[test]
fn relative_paths_resolve_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let file = base.join("flows/site.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "name: site\nsteps:\n  - id: a\n    uses: ../plugins@v2/a.wasm\n    allow:\n      read: [./data/]\n      write: [../out]\n",
    )
    .unwrap();
    let w = load(&file).unwrap();
    assert_eq!(w.base_dir, base.join("flows"));
    assert_eq!(
        w.steps[0].kind,
        StepKind::Plugin(PluginRef::Path {
            path: base.join("plugins@v2/a.wasm"),
            sha256: None
        })
    );
    let read = &w.steps[0].allow.read[0];
    assert_eq!(read.host_path, base.join("flows/data"));
    assert_eq!(read.guest_path, "data");
    let write = &w.steps[0].allow.write[0];
    assert_eq!(write.host_path, base.join("out"));
    assert_eq!(write.guest_path, base.join("out").display().to_string());
}

#[test]
fn a_missing_file_names_the_file() {
    let err = load(std::path::Path::new("/nonexistent/flow.yaml")).unwrap_err();
    assert!(matches!(err, Error::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read `/nonexistent/flow.yaml`"),
        "{err}"
    );
}
