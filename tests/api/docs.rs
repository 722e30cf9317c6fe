//! The docs stay true: the layout page lists every entry of `src/`, every
//! link between the README and `docs/` resolves (files and headings), and
//! the configuration table lists every environment variable `voicehub
//! serve` reads, with its default, and nothing else.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use clap::CommandFactory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every entry `ls src src/*/` prints, as `src/...` paths; directories end
/// with `/`, as the layout page writes them.
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
fn the_layout_page_lists_every_entry_of_src_and_nothing_else() {
    let layout = fs::read_to_string(root().join("docs/layout.md")).unwrap();
    let block = layout.split("```").nth(1).expect("a code block");
    let listed: BTreeSet<String> = block
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|path| path.starts_with("src/"))
        .map(str::to_owned)
        .collect();
    let actual = tree(root());
    let missing: Vec<_> = actual.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&actual).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/layout.md is out of date: missing {missing:?}, no longer in the tree {stale:?}"
    );
}

/// The README and every page of `docs/`, its subfolders included.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut folders = vec![root().join("docs")];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages
}

/// A heading's anchor as GitHub makes it: lowercase, punctuation dropped,
/// spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown page's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The relative link targets of a Markdown page: `](target)`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(end) = rest.find(')') else { continue };
        let target = &rest[..end];
        if !target.contains("://") && !target.starts_with("mailto:") && !target.contains(' ') {
            out.push(target.to_owned());
        }
    }
    out
}

#[test]
fn every_link_between_the_readme_and_the_docs_resolves() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            let (file, heading) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            checked += 1;
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
            } else if !heading.is_empty() {
                let headings = anchors(&fs::read_to_string(&target).unwrap());
                if !headings.contains(heading) {
                    broken.push(format!("{}: {link} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(
        checked > 20,
        "the pages link to each other: {checked} links"
    );
    // The README's map names every page of docs/.
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    for page in pages().iter().skip(1) {
        let name = page.strip_prefix(root()).unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("]({name})")),
            "the README's map does not link {name}"
        );
    }
}

/// Every environment variable `serve` reads through its flags, with the
/// flag's default (`None`: no default).
fn serve_settings() -> BTreeMap<String, Option<String>> {
    let mut cli = voicehub::config::Cli::command();
    cli.build();
    let serve = cli
        .get_subcommands()
        .find(|s| s.get_name() == "serve")
        .unwrap()
        .clone();
    let mut out = BTreeMap::new();
    for arg in serve.get_arguments().chain(cli.get_arguments()) {
        if let Some(env) = arg.get_env() {
            let default = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            out.insert(env.to_string_lossy().into_owned(), default);
        }
    }
    out
}

#[test]
fn the_configuration_table_lists_every_setting_with_its_default_and_nothing_else() {
    let operating = fs::read_to_string(root().join("docs/operating.md")).unwrap();
    let table = operating
        .split("| variable | default | meaning |")
        .nth(1)
        .expect("docs/operating.md has the configuration table");
    // Each row: the variables in its first cell, and its default cell.
    let mut documented = BTreeMap::new();
    let rows = table
        .lines()
        .skip_while(|l| !l.starts_with("|---"))
        .skip(1)
        .take_while(|l| l.starts_with('|'));
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, default) = (cells[1], cells[2]);
        for name in names.split(',') {
            documented.insert(name.trim().trim_matches('`').to_owned(), default.to_owned());
        }
    }
    let mut read = serve_settings();
    assert!(
        read.len() > 50,
        "serve's settings were found: {}",
        read.len()
    );
    // Read by the log filter, not a flag.
    read.insert("RUST_LOG".into(), Some("info".into()));
    let undocumented: Vec<_> = read
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let unknown: Vec<_> = documented
        .keys()
        .filter(|k| !read.contains_key(*k))
        .collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "the configuration table misses {undocumented:?} and lists settings serve does not read: {unknown:?}"
    );
    for (name, default) in &read {
        let cell = &documented[name];
        match default {
            Some(value) => assert!(
                cell.starts_with(&format!("`{value}`")),
                "{name}: the table says {cell:?}, the default is {value:?}"
            ),
            None => assert!(
                cell.starts_with("unset"),
                "{name}: the table says {cell:?}, but it has no default"
            ),
        }
    }
}
