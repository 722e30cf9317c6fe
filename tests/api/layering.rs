//! The module graph has no cycle: each top-level module of `src/` imports
//! only the modules listed after it in `src/lib.rs`'s layer order.

use std::{collections::BTreeSet, fs, path::Path};

/// The layer order, top first, as `src/lib.rs` documents it.
const LAYERS: [&str; 20] = [
    "server",
    "config",
    "health",
    "grpc",
    "connections",
    "auth",
    "write_path",
    "status_engine",
    "webhooks",
    "events",
    "error",
    "audio",
    "pb",
    "provider",
    "store",
    "quota",
    "redis",
    "metrics",
    "telemetry",
    "allocator",
];

/// The top-level modules `source` names through `crate::`, test code excluded.
fn crate_imports(source: &str) -> BTreeSet<String> {
    // Test modules close their files; everything before them is shipped code.
    let code = source
        .split("#[cfg(test)]\nmod ")
        .next()
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        let word: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        names.insert(word);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(word);
        }
    }
    names.remove("self");
    names
}

/// The `crate::` imports of every file under `path`, read file by file.
fn imports_under(path: &Path, out: &mut BTreeSet<String>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            imports_under(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.extend(crate_imports(&fs::read_to_string(path).unwrap()));
    }
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeSet::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        found.insert(name.clone());
        let position = LAYERS
            .iter()
            .position(|layer| *layer == name)
            .unwrap_or_else(|| panic!("module {name} is missing from the layer order"));
        let mut imports = BTreeSet::new();
        imports_under(&path, &mut imports);
        for import in imports {
            let below = LAYERS[position + 1..].contains(&import.as_str());
            assert!(
                below || import == name,
                "{name} imports crate::{import}, which is not below it"
            );
        }
    }
    let listed: BTreeSet<String> = LAYERS.iter().map(|l| (*l).to_owned()).collect();
    assert_eq!(
        found, listed,
        "the layer order lists exactly the modules of src/"
    );
}

#[test]
fn the_import_reader_sees_grouped_and_inline_paths() {
    let names = crate_imports(
        "use crate::{a::b, c, d::{e, f}};\nfn x() { crate::g::h(); }\n#[cfg(test)]\nfn y() { crate::k::l(); }\n#[cfg(test)]\nmod tests { use crate::z; }",
    );
    let expected: BTreeSet<String> = ["a", "c", "d", "g", "k"].map(str::to_owned).into();
    assert_eq!(names, expected);
}
