//! The example binaries a test drives, built on demand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The example `name` of the package at `manifest_dir` (pass
/// `env!("CARGO_MANIFEST_DIR")`), built with the profile and target
/// directory of the running test binary.
///
/// `cargo test` does not build examples, and a binary left from an earlier
/// build may be stale, so cargo is always asked, once per example and
/// process (a no-op when it is up to date).
///
/// # Panics
///
/// If the build fails and no binary exists from before (a failed build with
/// a binary left is reported on stderr, and that binary used).
pub fn example_binary(manifest_dir: impl AsRef<Path>, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(binary) = built.get(name) {
        return binary.clone();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name, "--profile", &profile])
        .arg("--manifest-path")
        .arg(manifest_dir.as_ref().join("Cargo.toml"));
    if let Some(target_dir) = profile_dir.parent() {
        build.arg("--target-dir").arg(target_dir);
    }
    match build.status() {
        Ok(status) if status.success() => {}
        outcome if binary.exists() => {
            eprintln!("building the {name} example failed ({outcome:?}); using the existing one")
        }
        outcome => panic!("building the {name} example failed: {outcome:?}"),
    }
    assert!(
        binary.exists(),
        "{} missing after the build",
        binary.display()
    );
    built.insert(name.to_owned(), binary.clone());
    binary
}
