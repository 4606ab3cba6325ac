//! Runs the Python interop suite (`tests/interop`: the real tritonclient, HTTP and gRPC) against
//! this very build of the `ferry` binary. `make test` sets FERRY_INTEROP_PYTHON to the venv's
//! python; without it the test says it was skipped (and fails if FERRY_REQUIRE_INTEROP is set).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn tritonclient_interop_suite() {
    let Some(python) = std::env::var_os("FERRY_INTEROP_PYTHON") else {
        assert!(
            std::env::var_os("FERRY_REQUIRE_INTEROP").is_none(),
            "FERRY_INTEROP_PYTHON is not set: run through `make test`"
        );
        eprintln!(
            "SKIPPED: set FERRY_INTEROP_PYTHON to a python with tests/interop/requirements.txt"
        );
        return;
    };
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    let status = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .status()
        .expect("python starts");
    assert!(status.success(), "the tritonclient interop suite failed");
}
