//! Where a download's bytes go: a blocking thread that writes them through a 1 MiB buffer and
//! hashes them (MD5, for S3 ETags) while the network side keeps receiving, then flushes and
//! syncs the file (fsync before the rename into the cache: after a crash an entry is whole or
//! absent). On loopback the sync and the MD5 are most of a download's time
//! (`bench/README.md`).

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use md5::Digest as _;
use tokio::sync::mpsc;

pub(crate) struct Sink {
    tx: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<std::io::Result<String>>,
}

impl Sink {
    /// Creates `file` (its directory must exist).
    pub(crate) fn create(file: &Path) -> std::io::Result<Sink> {
        let out = std::fs::File::create(file)?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(64);
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let mut md5 = md5::Md5::new();
            while let Some(chunk) = rx.blocking_recv() {
                md5.update(&chunk);
                out.write_all(&chunk)?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(md5.finalize().iter().map(|b| format!("{b:02x}")).collect())
        });
        Ok(Sink { tx, writer })
    }

    /// Hands a chunk to the writer; an error means the writer stopped (see [`Sink::finish`]).
    pub(crate) async fn write(&self, chunk: Bytes) -> Result<(), ()> {
        self.tx.send(chunk).await.map_err(|_| ())
    }

    /// Waits for every byte to be on disk; the MD5 of them all.
    pub(crate) async fn finish(self) -> std::io::Result<String> {
        drop(self.tx);
        self.writer.await.map_err(std::io::Error::other)?
    }
}
