//! Helpers for Magpie's tests (a dev-dependency only).
//!
//! Some tests need what a machine may lack: model weights (`magpie models fetch`),
//! `../shared` data, or Debian's Chromium. Such a test calls [`skip`] and returns. A skip
//! is never silent: it prints `SKIPPED (<what>): <why>`, and with
//! `MAGPIE_REQUIRE_ALL_TESTS=1` (set by `.ci/run`) it fails the test instead, unless
//! `<what>` is listed in `MAGPIE_ALLOW_SKIP` (comma-separated; `.ci/run` lists only what
//! it tried and failed to provide, and says so in its log).

use std::fmt::Display;
use std::path::PathBuf;

/// Reports a skipped test; panics when skips are not allowed (see the crate docs).
/// `what` names the missing prerequisite: `models`, `shared` or `chromium`.
pub fn skip(what: &str, why: impl Display) {
    let required = std::env::var("MAGPIE_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1");
    let allowed = std::env::var("MAGPIE_ALLOW_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|w| w.trim() == what);
    if required && !allowed {
        panic!("{why}: this test needs {what}, and MAGPIE_REQUIRE_ALL_TESTS=1 forbids skipping it");
    }
    eprintln!("SKIPPED ({what}): {why}");
}

/// The directory tests load model weights from: `$MAGPIE_MODELS_DIR`, else
/// `<workspace>/target/magpie-models` (where `.ci/run` fetches them).
pub fn models_dir() -> PathBuf {
    std::env::var_os("MAGPIE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/magpie-models")
        })
}

/// `../shared/<rel>` beside the workspace, or a [`skip`] and `None` when it is absent.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        skip("shared", format!("{} is absent", p.display()));
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_beside_the_workspace() {
        assert!(
            super::models_dir().ends_with("target/magpie-models")
                || std::env::var_os("MAGPIE_MODELS_DIR").is_some()
        );
    }
}
