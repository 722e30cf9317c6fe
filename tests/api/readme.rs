//! The README's layout section stays true to the tree.

use std::{collections::BTreeSet, fs, path::Path};

/// Every entry `ls src src/*/` prints, as `src/...` paths; directories end
/// with `/`, as the README writes them.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(root.join("src")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.insert(format!("src/{name}/"));
            for inner in fs::read_dir(entry.path()).unwrap() {
                let inner = inner.unwrap();
                let slash = if inner.file_type().unwrap().is_dir() {
                    "/"
                } else {
                    ""
                };
                let inner = inner.file_name().into_string().unwrap();
                out.insert(format!("src/{name}/{inner}{slash}"));
            }
        } else {
            out.insert(format!("src/{name}"));
        }
    }
    out
}

#[test]
fn the_readme_layout_lists_every_entry_of_src_and_nothing_else() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let layout = readme
        .split("## Layout")
        .nth(1)
        .expect("README has a Layout section");
    let block = layout.split("```").nth(1).expect("a code block");
    let listed: BTreeSet<String> = block
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|path| path.starts_with("src/"))
        .map(str::to_owned)
        .collect();
    let actual = tree(root);
    let missing: Vec<_> = actual.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&actual).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README layout is out of date: missing {missing:?}, no longer in the tree {stale:?}"
    );
}
