//! Where data comes from: a local path, an `http(s)://` URL, or an `hf://` dataset file.
//!
//! Remote sources are downloaded once into a cache directory (`<cache>/downloads/`), written
//! to a temporary file and renamed into place only when complete, and checked against an
//! expected blake3 hash when one is given. `hf://OWNER/NAME/PATH` (or
//! `hf://datasets/OWNER/NAME/PATH`) is `https://huggingface.co/datasets/OWNER/NAME/resolve/main/PATH`;
//! `HF_ENDPOINT` replaces the host (as with Hugging Face's own tools). Offline, the error says
//! so and suggests a local path.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, io};

/// The URL an `hf://` id points at, or `None` for other sources.
pub fn hf_url(source: &str) -> Option<String> {
    let rest = source.strip_prefix("hf://")?;
    let rest = rest.strip_prefix("datasets/").unwrap_or(rest);
    let mut parts = rest.splitn(3, '/');
    let (owner, name, file) = (parts.next()?, parts.next()?, parts.next()?);
    let endpoint =
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_owned());
    Some(format!(
        "{}/datasets/{owner}/{name}/resolve/main/{file}",
        endpoint.trim_end_matches('/')
    ))
}

/// blake3 (hex) of a file.
///
/// # Errors
/// When the file cannot be read.
pub fn file_hash(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path).map_err(io("cannot read", path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = file.read(&mut buf).map_err(io("cannot read", path))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        hasher.update(&buf[..k]);
    }
    Ok((hasher.finalize().to_hex().to_string(), n))
}

/// Makes `source` a local file: local paths are checked, URLs and `hf://` ids are downloaded
/// into `cache_dir` (once). `expected` is the file's blake3, when known.
///
/// # Errors
/// A missing local file, a failed download (with advice when offline), a hash mismatch.
pub fn fetch(
    source: &str,
    workdir: &Path,
    cache_dir: &Path,
    expected: Option<&str>,
) -> Result<PathBuf> {
    let url = if source.starts_with("http://") || source.starts_with("https://") {
        source.to_owned()
    } else if let Some(url) = hf_url(source) {
        url
    } else if source.starts_with("hf://") {
        return Err(Error::Config(format!(
            "{source}: write hf://OWNER/NAME/PATH/IN/THE/REPO (a file of a Hugging Face dataset)"
        )));
    } else {
        let path = workdir.join(source);
        if !path.is_file() {
            return Err(Error::Io {
                what: "data file not found:",
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        check(source, &path, expected)?;
        return Ok(path);
    };
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("download");
    let key = &blake3::hash(url.as_bytes()).to_hex()[..16];
    let dir = cache_dir.join("downloads");
    let target = dir.join(format!("{key}-{name}"));
    if target.is_file() {
        check(&url, &target, expected)?;
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    let tmp = dir.join(format!(".{key}-{name}.{}", std::process::id()));
    download(&url, &tmp)?;
    if let Err(e) = check(&url, &tmp, expected) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &target).map_err(io("cannot move into place", &target))?;
    Ok(target)
}

fn check(source: &str, path: &Path, expected: Option<&str>) -> Result<()> {
    if let Some(expected) = expected {
        let (actual, _) = file_hash(path)?;
        if actual != expected {
            return Err(Error::HashMismatch {
                url: source.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    Ok(())
}

fn download(url: &str, to: &Path) -> Result<()> {
    let fail = |message: String| Error::Download {
        url: url.to_owned(),
        message,
    };
    let response = ureq::get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => fail(format!("the server answered HTTP {code}")),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Io(_) | ureq::Error::Timeout(_) => fail(format!(
            "{e}: this machine seems to be offline or cannot reach the host; download the file elsewhere and give its local path as the source"
        )),
        other => fail(other.to_string()),
    })?;
    let mut reader = response.into_body().into_reader();
    let mut file = std::fs::File::create(to).map_err(io("cannot create", to))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| fail(format!("the transfer broke off: {e}")))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(io("cannot write", to))?;
    }
    file.sync_all().map_err(io("cannot write", to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A one-file HTTP server on loopback; answers `count` requests then stops.
    fn serve(
        body: &'static [u8],
        status: u16,
        count: usize,
    ) -> (String, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let mut served = 0;
            for stream in listener.incoming().take(count) {
                let mut stream = stream.expect("accept");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).expect("write");
                stream.write_all(body).expect("write");
                served += 1;
            }
            served
        });
        (format!("http://{addr}"), handle)
    }

    #[test]
    fn downloads_once_into_the_cache_and_checks_the_hash() {
        let dir = tempfile::tempdir().expect("tmp");
        let body: &'static [u8] = b"\"0\",\"1\",\"d\",\"q\",\"u\",\"hello\"\n";
        let (base, server) = serve(body, 200, 1);
        let url = format!("{base}/data/train.csv");
        let expected = blake3::hash(body).to_hex().to_string();
        let path = fetch(&url, dir.path(), dir.path(), Some(&expected)).expect("downloads");
        assert_eq!(std::fs::read(&path).expect("read"), body);
        assert!(
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("-train.csv"))
        );
        // The second fetch is served from the cache: the server answered only once.
        let again = fetch(&url, dir.path(), dir.path(), Some(&expected)).expect("cached");
        assert_eq!(again, path);
        assert_eq!(server.join().expect("server"), 1);
        let err = fetch(&url, dir.path(), dir.path(), Some("00")).expect_err("wrong hash");
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn http_errors_and_offline_are_clear() {
        let dir = tempfile::tempdir().expect("tmp");
        let (base, server) = serve(b"", 404, 1);
        let err =
            fetch(&format!("{base}/missing.csv"), dir.path(), dir.path(), None).expect_err("404");
        assert!(
            err.to_string().ends_with("the server answered HTTP 404"),
            "{err}"
        );
        server.join().expect("server");
        // A port nobody listens on stands for "offline".
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let err = fetch(
            &format!("http://127.0.0.1:{port}/x.csv"),
            dir.path(),
            dir.path(),
            None,
        )
        .expect_err("refused");
        assert!(
            err.to_string()
                .contains("give its local path as the source"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(dir.path().join("downloads")).map_or(0, |d| d.count()) == 0,
            "no partial file is left"
        );
    }

    #[test]
    fn hf_ids_and_local_paths() {
        assert_eq!(
            hf_url("hf://datasets/stanfordnlp/sentiment140/data/train.parquet")
                .as_deref()
                .map(|u| u.ends_with(
                    "/datasets/stanfordnlp/sentiment140/resolve/main/data/train.parquet"
                )),
            Some(true)
        );
        let dir = tempfile::tempdir().expect("tmp");
        let err = fetch("nope.csv", dir.path(), dir.path(), None).expect_err("missing");
        assert!(err.to_string().starts_with("data file not found:"), "{err}");
    }
}
