//! Start-up preparation of a data device for glommio's DMA files.
//!
//! glommio 0.9 decides per device, per executor thread, whether to use the polled I/O ring
//! (IOPOLL) by issuing one polled read against the first DmaFile opened on that device. If
//! that file is new and empty, the read completes without touching the device, IOPOLL is
//! wrongly enabled, and every later DMA read on a device without polling support (virtio,
//! most cloud disks) fails with EOPNOTSUPP. Each shard therefore opens a non-empty probe
//! file on every data device before any segment file.

use std::io::Write;
use std::path::Path;

use glommio::io::DmaFile;

use crate::error::{IoFailure, StorageError};

/// Name of the probe file kept in every data directory.
pub const PROBE_FILE_NAME: &str = ".device-probe";
const PROBE_BYTES: usize = 4096;

/// Creates the data dir if needed and makes glommio probe its device on a non-empty file.
/// Runs on the shard (executor thread) that will do I/O there.
pub async fn prepare_data_dir(dir: &Path) -> Result<(), StorageError> {
    let probe = dir.join(PROBE_FILE_NAME);
    let (owned_dir, owned_probe) = (dir.to_path_buf(), probe.clone());
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&owned_dir)?;
            let current = std::fs::metadata(&owned_probe).map(|m| m.len()).unwrap_or(0);
            if current < PROBE_BYTES as u64 {
                let mut file = std::fs::File::create(&owned_probe)?;
                file.write_all(&[0x5a; PROBE_BYTES])?;
                file.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| IoFailure::new("create probe file", &probe, e))?;
    let file = DmaFile::open(&probe).await.map_err(|e| IoFailure::new("open probe file", &probe, e))?;
    file.close().await.map_err(|e| IoFailure::new("close probe file", &probe, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a brand-new empty DmaFile first (what a fresh partition does), then writes and
    /// reads it back. Without `prepare_data_dir` this read fails with EOPNOTSUPP on devices
    /// that do not support polled I/O, such as the virtio disk of the CI machine.
    async fn new_file_round_trip(dir: &Path) -> std::io::Result<Vec<u8>> {
        let path = dir.join("fresh.log");
        let file = glommio::io::OpenOptions::new().read(true).write(true).create(true).dma_open(&path).await?;
        let mut buffer = file.alloc_dma_buffer(4096);
        buffer.as_bytes_mut().fill(7);
        file.write_at(buffer, 0).await?;
        file.fdatasync().await?;
        let read = file.read_at(0, 4096).await?;
        Ok(read.to_vec())
    }

    fn in_fresh_executor<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make().unwrap().run(f)
    }

    #[test]
    fn reads_work_after_preparing_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = in_fresh_executor(async {
            prepare_data_dir(dir.path()).await.unwrap();
            new_file_round_trip(dir.path()).await
        })
        .unwrap();
        assert_eq!(bytes, vec![7u8; 4096]);
    }

    /// Documents the trap on devices without polled I/O (skipped where the device polls).
    #[test]
    fn without_preparation_the_trap_fires_on_non_polling_devices() {
        let dir = tempfile::tempdir().unwrap();
        if device_supports_polling(dir.path()) {
            return;
        }
        let result = in_fresh_executor(new_file_round_trip(dir.path()));
        let error = result.expect_err("glommio's IOPOLL probe trap did not fire: re-check device.rs");
        // glommio wraps the errno in its own message.
        let text = error.to_string();
        assert!(text.contains(&format!("os error {}", libc::EOPNOTSUPP)), "{text}");
    }

    fn device_supports_polling(path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).unwrap().dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let queue = format!("/sys/dev/block/{major}:{minor}/queue/io_poll");
        let parent = format!("/sys/dev/block/{major}:{minor}/../queue/io_poll");
        let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim() == "1");
        read(&queue).or_else(|| read(&parent)).unwrap_or(false)
    }
}
