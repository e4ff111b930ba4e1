-- Content hashes of the files stages read, memoized by what stat() says about them, so an
-- unchanged 500 MB model directory is not re-read on every run. Never part of a fingerprint:
-- a row only saves re-hashing a file whose size, mtime and inode are all unchanged.
CREATE TABLE file_hashes (
    path     TEXT PRIMARY KEY,  -- absolute, canonical
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode    INTEGER NOT NULL,
    hash     TEXT NOT NULL      -- blake3, hex
);
-- A directory's manifest by the hash it gives, so `kiln status` can name the files that changed.
CREATE TABLE dir_manifests (
    hash     TEXT PRIMARY KEY,
    manifest TEXT NOT NULL      -- JSON [[relative path, size, blake3], ...], sorted by path
);
