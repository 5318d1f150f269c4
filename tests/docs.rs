//! The references in docs/ that mirror code are generated from it: this test fails when
//! a committed copy is stale. `RPS_UPDATE_DOCS=1 cargo test --test docs` rewrites them.

use std::path::Path;

fn check(file: &str, generated: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    if std::env::var_os("RPS_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{file} is stale: regenerate it with `RPS_UPDATE_DOCS=1 cargo test --release --test docs`"
    );
}

#[test]
fn cli_reference_is_current() {
    check("docs/cli.md", rps::cli::markdown());
}

#[test]
fn metrics_reference_is_current() {
    check("docs/metrics.md", rps::metrics::markdown());
}
