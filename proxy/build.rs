//! Puts the git commit into `weir --version`: `weir 0.1.0 (abc1234 2026-12-02)`, the short
//! hash and the commit's date. Built outside a git checkout of this repository (a source
//! tarball, a vendored copy inside another repository, no `git` installed), the version is
//! just `weir 0.1.0`.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let info = commit(&manifest_dir)
        .map(|(hash, date)| format!(" ({hash} {date})"))
        .unwrap_or_default();
    println!("cargo:rustc-env=WEIR_BUILD_COMMIT={info}");
    println!("cargo:rerun-if-changed=build.rs");
}

/// The short hash and the date of HEAD, when `manifest_dir` is in a git checkout of this
/// repository; also tells cargo which files to watch so that a new commit rebuilds.
fn commit(manifest_dir: &Path) -> Option<(String, String)> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(manifest_dir)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    // Only our own repository: the proxy's parent directory must be the checkout's top.
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    let ours = manifest_dir.parent()?;
    if top.canonicalize().ok()? != ours.canonicalize().ok()? {
        return None;
    }
    // In a linked worktree, HEAD is under the worktree's git dir, the refs under the common one.
    let git_dir = absolute(manifest_dir, git(&["rev-parse", "--git-dir"])?);
    let common_dir = absolute(manifest_dir, git(&["rev-parse", "--git-common-dir"])?);
    watch(&git_dir.join("HEAD"));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        // A commit rewrites the loose ref, or creates it when the branch was packed.
        let loose = common_dir.join(&branch);
        if loose.exists() {
            watch(&loose);
        } else if let Some(parent) = loose.parent().filter(|p| p.exists()) {
            watch(parent);
        }
        watch(&common_dir.join("packed-refs"));
    }
    let hash = git(&["rev-parse", "--short", "HEAD"])?;
    let date = git(&["log", "-1", "--format=%cd", "--date=short", "HEAD"])?;
    Some((hash, date))
}

fn absolute(base: &Path, path: String) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// A path cargo should watch; a missing one would make cargo rerun this script every build.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
