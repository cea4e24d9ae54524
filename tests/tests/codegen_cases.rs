//! Runs every codegen case file under `tests/codegen/` and snapshots which kernel each step got on
//! each ISA level (see `qc_tests::check_codegen_file`).

use qc_tests::{check_codegen_file, snapshot_files};
use std::path::Path;

#[test]
fn codegen_case_files() {
    snapshot_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("codegen"), "codegen__", check_codegen_file);
}
