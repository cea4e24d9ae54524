//! Runs every case file under `tests/cases/` through the one `check` and snapshots its output.
//! Every file is checked even when an earlier one fails; the failures are listed together.

use qc_tests::{check_file, snapshot_files};
use std::path::Path;

#[test]
fn case_files() {
    snapshot_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"), "", check_file);
}
