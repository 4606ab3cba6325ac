//! What a fetched (or local) model directory holds: the ONNX file (`model.onnx`, else the one
//! `*.onnx`, also one level down as in Triton's `1/model.onnx`) and, beside it or at the top,
//! a `tokenizer.json` (the model then takes sentences). One rule for the server and `ferry plan`.

use std::path::{Path, PathBuf};

/// The model file and its tokenizer in `path` (a file is its own model, without tokenizer).
pub fn model_files(path: &Path) -> Result<(PathBuf, Option<PathBuf>), String> {
    if !path.is_dir() {
        return Ok((path.to_path_buf(), None));
    }
    let onnx = |dir: &Path| -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        found.sort();
        found
    };
    let mut candidates = onnx(path);
    if candidates.is_empty() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            candidates.extend(onnx(&dir));
        }
    }
    let model = match candidates
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "model.onnx"))
    {
        Some(m) => m.clone(),
        None if candidates.len() == 1 => candidates[0].clone(),
        None if candidates.is_empty() => {
            return Err(format!(
                "{}: no .onnx file in the model directory",
                path.display()
            ));
        }
        None => {
            let names: Vec<String> = candidates
                .iter()
                .map(|p| p.strip_prefix(path).unwrap_or(p).display().to_string())
                .collect();
            return Err(format!(
                "{}: several .onnx files ({}) and none is model.onnx",
                path.display(),
                names.join(", ")
            ));
        }
    };
    let beside = model.parent().map(|d| d.join("tokenizer.json"));
    let tokenizer = beside
        .filter(|t| t.is_file())
        .or_else(|| Some(path.join("tokenizer.json")).filter(|t| t.is_file()));
    Ok((model, tokenizer))
}

/// Files under `path` (1 for a file).
pub fn count_files(path: &Path) -> usize {
    if !path.is_dir() {
        return usize::from(path.exists());
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| count_files(&e.path()))
        .sum()
}

/// The one file of a directory that holds exactly one file and no subdirectory.
pub fn single_file(dir: &Path) -> Option<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    match entries.as_slice() {
        [one] if one.is_file() => Some(one.clone()),
        _ => None,
    }
}

/// Puts the model at `from` (a file or a directory) at `to`: hard links where the two share a
/// file system, else copies; through a temporary name renamed at the end, so `to` appears only
/// complete. An existing `to` is replaced.
pub fn place(from: &Path, to: &Path) -> std::io::Result<()> {
    fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
        if from.is_dir() {
            std::fs::create_dir_all(to)?;
            for entry in std::fs::read_dir(from)? {
                let entry = entry?;
                link_or_copy(&entry.path(), &to.join(entry.file_name()))?;
            }
            Ok(())
        } else {
            std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
        }
    }
    let name = to
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let partial = to.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial).or_else(|_| std::fs::remove_file(&partial));
    link_or_copy(from, &partial)?;
    if to.is_dir() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::rename(&partial, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_names_its_model_and_tokenizer() {
        let dir = std::env::temp_dir().join(format!("ferry-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::write(dir.join("1/model.onnx"), b"m").unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let (model, tokenizer) = model_files(&dir).unwrap();
        assert_eq!(model, dir.join("1/model.onnx"));
        assert_eq!(tokenizer, Some(dir.join("tokenizer.json")));
        assert_eq!(count_files(&dir), 3);
        std::fs::write(dir.join("a.onnx"), b"a").unwrap();
        std::fs::write(dir.join("b.onnx"), b"b").unwrap();
        let error = model_files(&dir).unwrap_err();
        assert!(error.contains("a.onnx, b.onnx"), "{error}");
        let placed = dir.with_extension("placed");
        place(&dir, &placed).unwrap();
        assert_eq!(std::fs::read(placed.join("1/model.onnx")).unwrap(), b"m");
        assert_eq!(count_files(&placed), 5);
        std::fs::remove_dir_all(&placed).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
