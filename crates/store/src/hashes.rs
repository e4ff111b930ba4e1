//! The memo of input file hashes (`file_hashes`) and directory manifests (`dir_manifests`).

use sqlx::Row;

use crate::Store;
use crate::backend::{on_pool, on_tx};
use crate::error::{Result, sql};

/// A file's content hash and the `stat` facts it was computed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    /// Absolute, canonical path.
    pub path: String,
    /// Size in bytes.
    pub size: i64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Inode number (0 where the platform has none).
    pub inode: i64,
    /// blake3 of the content, hex.
    pub hash: String,
}

impl Store {
    /// Every memoized file hash.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn file_hashes(&self) -> Result<Vec<FileHash>> {
        on_pool!(&self.pool, p => sqlx::query("SELECT path, size, mtime_ns, inode, hash FROM file_hashes")
            .fetch_all(p)
            .await
            .map_err(sql("read file hashes"))
            .map(|rows| rows
                .into_iter()
                .map(|r| FileHash {
                    path: r.get(0),
                    size: r.get(1),
                    mtime_ns: r.get(2),
                    inode: r.get(3),
                    hash: r.get(4),
                })
                .collect()))
    }

    /// Records file hashes (replacing older rows for the same paths) and directory manifests
    /// (`(hash, manifest JSON)`), in one transaction.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn save_hashes(
        &self,
        files: &[FileHash],
        manifests: &[(String, String)],
    ) -> Result<()> {
        if files.is_empty() && manifests.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_write("begin hashes").await?;
        on_tx!(&mut tx, t => {
            for f in files {
                sqlx::query(
                    "INSERT INTO file_hashes (path, size, mtime_ns, inode, hash)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (path) DO UPDATE SET size = excluded.size,
                       mtime_ns = excluded.mtime_ns, inode = excluded.inode, hash = excluded.hash",
                )
                .bind(&f.path)
                .bind(f.size)
                .bind(f.mtime_ns)
                .bind(f.inode)
                .bind(&f.hash)
                .execute(&mut **t)
                .await
                .map_err(sql("save a file hash"))?;
            }
            for (hash, manifest) in manifests {
                sqlx::query(
                    "INSERT INTO dir_manifests (hash, manifest) VALUES ($1, $2)
                     ON CONFLICT (hash) DO NOTHING",
                )
                .bind(hash)
                .bind(manifest)
                .execute(&mut **t)
                .await
                .map_err(sql("save a directory manifest"))?;
            }
        });
        tx.commit("commit hashes").await
    }

    /// The manifest (JSON) of the directory whose hash is `hash`, if recorded.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn dir_manifest(&self, hash: &str) -> Result<Option<String>> {
        on_pool!(&self.pool, p => sqlx::query("SELECT manifest FROM dir_manifests WHERE hash = $1")
            .bind(hash)
            .fetch_optional(p)
            .await
            .map_err(sql("read a directory manifest"))
            .map(|row| row.map(|r| r.get::<String, _>(0))))
    }
}
