//! `--model` as a Hugging Face repository id (`kuleshov-group/PlantCaduceus_l20`), found in
//! the local Hugging Face cache and never downloaded: this tool makes no network requests.
//!
//! The cache layout (huggingface_hub): `<cache>/models--<owner>--<name>/refs/<revision>`
//! holds a commit hash, `snapshots/<hash>/` the files (symlinks into `blobs/`, which are
//! followed like any file). The cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.

use std::path::{Path, PathBuf};

use crate::error::ModelError;

fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Whether `s` has the shape of a repository id: `owner/name`, each of letters, digits, `-_.`.
fn is_repo_id(s: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    matches!(s.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

/// The folder `arg` names: itself when it exists, else the cached snapshot of the repository
/// id it spells (the `main` revision, or the only snapshot there is).
pub fn resolve(arg: &Path) -> Result<PathBuf, ModelError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let not_found = |why: String| ModelError::Io { path: arg.to_path_buf(), err: std::io::Error::new(std::io::ErrorKind::NotFound, why) };
    let Some(id) = arg.to_str().filter(|s| is_repo_id(s)) else {
        return Err(not_found("model folder not found".into()));
    };
    let Some(cache) = cache_dir() else {
        return Err(not_found("model folder not found, and no Hugging Face cache to look in (set HF_HOME)".into()));
    };
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let missing = || {
        not_found(format!(
            "not a folder, and not in the local Hugging Face cache ({}); fetch it once with `huggingface-cli download {id}` (dna-mamba never downloads)",
            repo.display()
        ))
    };
    if !repo.is_dir() {
        return Err(missing());
    }
    if let Ok(hash) = std::fs::read_to_string(repo.join("refs/main")) {
        let snap = repo.join("snapshots").join(hash.trim());
        if hash.trim().chars().all(|c| c.is_ascii_hexdigit()) && snap.is_dir() {
            return Ok(snap);
        }
    }
    let snaps: Vec<PathBuf> = std::fs::read_dir(repo.join("snapshots"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    match snaps.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(missing()),
        _ => Err(not_found(format!(
            "{} snapshots of {id} in {} and no refs/main to choose one: pass the snapshot folder itself",
            snaps.len(),
            repo.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(is_repo_id("kuleshov-group/PlantCaduceus_l20"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("../x"));
        assert!(!is_repo_id("plain"));
    }
}
