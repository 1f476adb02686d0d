//! Sets `HAPULSE_GIT_COMMIT` (the label `commit` of `hapulse_build_info`): the environment's
//! `HAPULSE_GIT_COMMIT` when set (a package built outside a checkout), else the commit the
//! checkout's `.git/HEAD` names, read from the files (no `git` process), else nothing (the
//! metric says `unknown`). Cargo runs this again when HEAD or the branch it names moves.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-env-changed=HAPULSE_GIT_COMMIT");
    if let Ok(commit) = std::env::var("HAPULSE_GIT_COMMIT") {
        println!("cargo::rustc-env=HAPULSE_GIT_COMMIT={commit}");
        return;
    }
    let Some(git) = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| Path::new(&dir).join("../.git"))
        .filter(|git| git.is_dir())
    else {
        return;
    };
    if let Some(commit) = head_commit(&git) {
        println!("cargo::rustc-env=HAPULSE_GIT_COMMIT={commit}");
    }
}

/// The first 12 hex digits of the commit HEAD names, directly or through a branch (a loose ref
/// file or `packed-refs`), with the files to watch printed for cargo.
fn head_commit(git: &Path) -> Option<String> {
    let head_path = git.join("HEAD");
    println!("cargo::rerun-if-changed={}", head_path.display());
    let head = std::fs::read_to_string(&head_path).ok()?;
    let head = head.trim();
    let full = match head.strip_prefix("ref: ") {
        None => head.to_string(),
        Some(name) => {
            let loose = git.join(name);
            let packed = git.join("packed-refs");
            // Only paths that exist: cargo reruns a script every build for a missing one.
            let folder = loose.parent().map(Path::to_path_buf);
            for path in [Some(loose.clone()), Some(packed.clone()), folder]
                .into_iter()
                .flatten()
            {
                if path.exists() {
                    println!("cargo::rerun-if-changed={}", path.display());
                }
            }
            match std::fs::read_to_string(&loose) {
                Ok(text) => text.trim().to_string(),
                Err(_) => std::fs::read_to_string(&packed)
                    .ok()?
                    .lines()
                    .find_map(|line| {
                        line.strip_suffix(name)?
                            .strip_suffix(' ')
                            .map(str::to_string)
                    })?,
            }
        }
    };
    let ok = full.len() >= 12 && full.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| full[..12].to_string())
}
