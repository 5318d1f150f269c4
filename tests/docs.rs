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

/// The numbers of a text, as written (`3,740` and `3740` are one number): maximal runs of
/// digits, dots and commas that start and end with a digit, commas removed.
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (!cur.is_empty() && (c == '.' || c == ',')) {
            cur.push(c);
            continue;
        }
        let n = cur.trim_end_matches(['.', ',']).replace(',', "");
        if !n.is_empty() {
            out.push(n);
        }
        cur.clear();
    }
    out
}

/// Every number the README's Results section quotes stands in a results page that its
/// bullet links to: the README repeats measurements, it never makes them.
#[test]
fn readme_numbers_stand_in_the_pages_they_link() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let results = readme
        .split("\n## Results")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Results section");
    let bullets: Vec<&str> = results.split("\n- ").skip(1).collect();
    assert!(bullets.len() >= 5, "{results}");
    for bullet in bullets {
        // The pages the bullet links, and its text without the link targets.
        let mut pages = String::new();
        let mut text = String::new();
        let mut rest = bullet;
        while let Some(open) = rest.find("](") {
            text.push_str(&rest[..open]);
            let close = rest[open..].find(')').map_or(rest.len(), |c| open + c);
            let target = &rest[open + 2..close];
            if let Some(page) = target.strip_prefix("docs/results/") {
                let page = page.split('#').next().unwrap_or(page);
                let path = root.join("docs/results").join(page);
                pages.push_str(
                    &std::fs::read_to_string(&path)
                        .unwrap_or_else(|_| panic!("README links {target}, which does not exist")),
                );
            }
            rest = &rest[close.min(rest.len())..];
        }
        text.push_str(rest);
        assert!(
            !pages.is_empty(),
            "a Results bullet links no results page:\n{bullet}"
        );
        let known: std::collections::HashSet<String> = numbers(&pages).into_iter().collect();
        for n in numbers(&text) {
            assert!(
                known.contains(&n),
                "README quotes {n}, which no page it links holds:\n{bullet}"
            );
        }
    }
}

/// Every source file of both crates is named in docs/architecture.md by its path (a file
/// of tests, `tests.rs`, goes with its parent), and every source path it names exists: the
/// map cannot drift from the tree.
#[test]
fn the_architecture_map_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src"), root.join("crates/nn/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|n| n != "tests.rs")
            {
                files.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !map.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these files (add a row to its map): {missing:?}"
    );
    let stale: Vec<&str> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|p| (p.starts_with("src/") || p.starts_with("crates/")) && p.ends_with(".rs"))
        .filter(|p| !root.join(p).exists())
        .collect();
    assert!(
        stale.is_empty(),
        "docs/architecture.md names files that do not exist: {stale:?}"
    );
}

/// The test files name metrics datasets by their literal names (`"train/loss"`), on
/// purpose: those names are the file-format contract that users' h5py and pandas code
/// types too (docs/metrics.md, generated from the schema and kept current above). Every
/// such literal must name a dataset of that contract, so a renamed column fails here, in
/// one place, listing where the old name is still used. (The dataset file's
/// `train/images` and `train/labels`, docs/formats.md, share a prefix and are allowed.)
#[test]
fn column_names_in_the_tests_are_datasets_of_the_contract() {
    use rps::metrics::schema::{DIAG_COLUMNS, EVAL_COLUMNS, LINK_MATRICES, STEP_COLUMNS};
    let mut contract: Vec<&str> = STEP_COLUMNS.iter().map(|c| c.name).collect();
    contract.extend(EVAL_COLUMNS.iter().map(|c| c.name));
    contract.extend(DIAG_COLUMNS.iter().map(|c| c.name));
    contract.extend(LINK_MATRICES.iter().map(|m| m.name));
    contract.push(rps::metrics::trace::TRACE_DATASET);
    // The dataset file's groups (docs/formats.md) share the prefix `train/`.
    contract.extend(["train/images", "train/labels"]);
    let groups = [
        "train/", "eval/", "comm/", "time/", "diag/", "links/", "trace/",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(root.join("common/mod.rs"));
    let mut unknown = Vec::new();
    let mut seen = 0;
    for file in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        for (i, literal) in text.split('"').enumerate().filter(|(i, _)| i % 2 == 1) {
            let is_name = groups.iter().any(|g| literal.starts_with(g))
                && literal[literal.find('/').unwrap() + 1..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !literal.ends_with('/');
            if is_name {
                seen += 1;
                if !contract.contains(&literal) {
                    unknown.push(format!("{} (literal {i}): {literal}", file.display()));
                }
            }
        }
    }
    assert!(
        seen > 100,
        "the scan found only {seen} column names: is it still reading the tests?"
    );
    assert!(
        unknown.is_empty(),
        "not datasets of docs/metrics.md: {unknown:#?}"
    );
}
