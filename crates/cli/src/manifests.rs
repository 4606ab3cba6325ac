//! Manifests as the CLI reads them: files, directories (their *.yaml, *.yml, *.json) or stdin,
//! documents joined; for the daemon, relative model paths made absolute.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// Read manifests from files, directories or stdin; relative model paths become absolute
/// (relative to the working directory), since the daemon runs elsewhere.
pub fn read_manifests(files: &[PathBuf]) -> Result<String> {
    let text = read_manifest_files(files)?;
    Ok(absolutize_model_paths(&text).unwrap_or(text))
}

/// The manifests as written, documents joined (for `ferry render`: paths stay as they are).
pub fn read_manifest_files(files: &[PathBuf]) -> Result<String> {
    let mut documents = Vec::new();
    for file in files {
        if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            documents.push(text);
        } else if file.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            for entry in entries {
                documents.push(
                    std::fs::read_to_string(&entry)
                        .with_context(|| format!("cannot read {}", entry.display()))?,
                );
            }
        } else {
            documents.push(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
            );
        }
    }
    Ok(documents.join("\n---\n"))
}

pub(crate) fn absolutize_model_paths(text: &str) -> Option<String> {
    use serde::Deserialize;
    let cwd = std::env::current_dir().ok()?;
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let mut value = Value::deserialize(document).ok()?;
        if value.is_null() {
            continue;
        }
        for pointer in [
            "/spec/predictor/model/uri",
            "/spec/predictor/model/storageUri",
            "/spec/predictor/onnx/storageUri",
        ] {
            if let Some(slot) = value.pointer_mut(pointer)
                && let Some(uri) = slot.as_str()
                && !uri.contains("://")
                && !uri.is_empty()
                && !Path::new(uri).is_absolute()
            {
                *slot = Value::String(cwd.join(uri).display().to_string());
            }
        }
        out.push(serde_json::to_string(&value).ok()?);
    }
    Some(out.join("\n---\n"))
}
