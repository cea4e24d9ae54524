//! Runs every case file under `tests/cases/` through the one `check` and snapshots its output.
//! Every file is checked even when an earlier one fails; the failures are listed together.

use qc_tests::{check_file, qir_files};
use std::path::Path;

#[test]
fn case_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let files = qir_files(&root);
    assert!(files.len() >= 7, "expected the case files under {}", root.display());
    let mut failed = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&root).expect("under root").with_extension("");
        let name = rel.to_string_lossy().replace(['/', '\\'], "__");
        let checked = std::panic::catch_unwind(|| {
            let output = check_file(&path);
            insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false, input_file => &path }, {
                insta::assert_snapshot!(name, output);
            });
        });
        if checked.is_err() {
            failed.push(rel.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{} case files failed (each one's panic is printed above): {}", failed.len(), failed.join(", "));
}
