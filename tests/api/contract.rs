//! The contract is linted (buf STANDARD, with the AIP-style exceptions in
//! `proto/buf.yaml`) and has no breaking change against the previous
//! commit. buf comes from the npm package `@bufbuild/buf`, which
//! `scripts/test` installs when it is missing.

use std::{fs, path::Path, process::Command};

fn buf(args: &[&str], dir: &Path) -> (bool, String) {
    let program = std::env::var("VOICEHUB_BUF").unwrap_or_else(|_| "buf".into());
    let out = Command::new(&program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run buf ({program}): {e}; install it with `npm install -g @bufbuild/buf` or run scripts/test")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_contract_passes_buf_lint() {
    let (ok, out) = buf(&["lint", "proto"], root());
    assert!(ok, "buf lint:\n{out}");
}

#[test]
fn the_contract_has_no_breaking_change_against_the_previous_commit() {
    let (ok, out) = buf(
        &[
            "breaking",
            "proto",
            "--against",
            ".git#ref=HEAD~1,subdir=proto",
        ],
        root(),
    );
    assert!(ok, "buf breaking against HEAD~1:\n{out}");
}

#[test]
fn a_breaking_change_is_caught() {
    // The contract with a field renamed, checked against the real one.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("proto");
    for entry in [
        "buf.yaml",
        "voicehub/v1/voice.proto",
        "voicehub/events/v1/events.proto",
    ] {
        let to = copy.join(entry);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(root().join("proto").join(entry), &to).unwrap();
    }
    let proto = copy.join("voicehub/v1/voice.proto");
    let text = fs::read_to_string(&proto).unwrap();
    assert!(text.contains("bytes data = 3;"));
    fs::write(
        &proto,
        text.replace("bytes data = 3;", "bytes payload = 3;"),
    )
    .unwrap();
    let against = root().join("proto");
    let (ok, out) = buf(
        &[
            "breaking",
            copy.to_str().unwrap(),
            "--against",
            against.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!ok, "a renamed field passed buf breaking:\n{out}");
    assert!(
        out.contains("changed name from \"data\" to \"payload\""),
        "{out}"
    );
}
