//! Artifact and log files: served only from inside the results directory, whatever path the
//! store recorded (a store is data, and data may say `../../etc/passwd`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// The file a recorded `path` names, if it lies inside `root` (canonical) once every `..`
/// and symbolic link is resolved. A relative path is taken from `project` (where kiln ran).
///
/// # Errors
/// [`Error::NotFound`] when the file does not exist, [`Error::Forbidden`] when it lies
/// outside `root`.
pub fn inside(root: &Path, project: &Path, recorded: &str) -> Result<PathBuf, Error> {
    let path = project.join(recorded);
    let real = path
        .canonicalize()
        .map_err(|_| Error::NotFound(format!("no file {recorded}")))?;
    if !real.starts_with(root) {
        return Err(Error::Forbidden(format!(
            "{recorded} is outside the results directory {}",
            root.display()
        )));
    }
    if !real.is_file() {
        return Err(Error::NotFound(format!("{recorded} is not a file")));
    }
    Ok(real)
}

/// How the run page shows an artifact (in this order: images first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    /// Inline, as an image.
    Image,
    /// Its first bytes as text.
    Text,
    /// A link only.
    File,
}

/// What an artifact's extension says about showing it.
pub fn shown(path: &str) -> Shown {
    match extension(path).as_str() {
        "svg" | "png" | "jpg" | "jpeg" | "gif" | "webp" => Shown::Image,
        "json" | "jsonl" | "csv" | "tsv" | "txt" | "md" | "log" | "yaml" | "yml" => Shown::Text,
        _ => Shown::File,
    }
}

fn extension(path: &str) -> String {
    Path::new(path)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

/// The `Content-Type` an artifact is served with: images as images, everything else as
/// plain text or bytes, never as a page of its own (an HTML artifact shows as text).
pub fn content_type(path: &Path) -> &'static str {
    match extension(&path.to_string_lossy()).as_str() {
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "json" | "jsonl" => "application/json",
        _ if shown(&path.to_string_lossy()) == Shown::Text => "text/plain; charset=utf-8",
        "log" | "html" | "htm" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The first `limit` bytes of a file as text (invalid UTF-8 replaced), and whether there is
/// more.
///
/// # Errors
/// When the file cannot be read.
pub fn head(path: &Path, limit: usize) -> Result<(String, bool), Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let mut buf = Vec::with_capacity(limit.min(1 << 16));
    file.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("cannot read", path, e))?;
    let more = buf.len() > limit;
    buf.truncate(limit);
    Ok((String::from_utf8_lossy(&buf).into_owned(), more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_root_are_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("results");
        std::fs::create_dir_all(root.join("cache/f")).expect("mkdir");
        std::fs::write(root.join("cache/f/a.json"), "{}").expect("write");
        std::fs::write(dir.path().join("secret.txt"), "no").expect("write");
        let root = root.canonicalize().expect("canonical");
        let ok = inside(&root, dir.path(), "results/cache/f/a.json");
        assert!(ok.is_ok(), "{ok:?}");
        let abs = root.join("cache/f/a.json");
        assert!(inside(&root, dir.path(), &abs.to_string_lossy()).is_ok());
        for escape in [
            "results/../secret.txt",
            "results/cache/f/../../../secret.txt",
            "/etc/passwd",
            "secret.txt",
        ] {
            assert!(
                matches!(inside(&root, dir.path(), escape), Err(Error::Forbidden(_))),
                "{escape}"
            );
        }
        assert!(matches!(
            inside(&root, dir.path(), "results/cache/nothing"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            inside(&root, dir.path(), "results/cache"),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn html_artifacts_are_never_served_as_pages() {
        assert_eq!(
            content_type(Path::new("a/report.html")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a/trace.SVG")), "image/svg+xml");
        assert_eq!(
            content_type(Path::new("a/x.bin")),
            "application/octet-stream"
        );
    }
}
