//! The `outbox` transport: writes each message to `<dir>/<message_id>.eml` instead of sending it.
//!
//! Used for development and dry runs. Files appear atomically (written to a hidden temporary file
//! in the same directory, flushed, then renamed), so a reader polling the directory never sees a
//! half-written message.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;

use super::{Receipt, SendError};
use crate::message::BuiltMessage;

/// Distinguishes temporary files of concurrent writes within this process (the process id
/// distinguishes processes sharing a directory). A counter keeps this free of clocks and RNGs.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes messages as `.eml` files into a directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    name: String,
    dir: PathBuf,
}

impl Outbox {
    /// An outbox writing into `dir`, which is created on first send if missing.
    pub fn new(name: String, dir: PathBuf) -> Outbox {
        Outbox { name, dir }
    }

    /// The configured transport name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory messages are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `msg.raw` to `<dir>/<message_id>.eml`, replacing an earlier file for the same id
    /// (a retry of the same message). The receipt's `response` is the path written.
    pub async fn send(&self, msg: &BuiltMessage) -> Result<Receipt, SendError> {
        // The id becomes a file name; anything that could escape the directory or hide the file
        // is refused. Retrying cannot fix a bad id, hence permanent.
        let id = &msg.message_id;
        if id.is_empty() || id.starts_with('.') || id.contains(['/', '\\', '\0']) {
            return Err(SendError::permanent(format!(
                "outbox {}: message id {id:?} cannot be used as a file name",
                self.name
            )));
        }

        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|err| self.io_error("create directory", &self.dir, &err))?;

        let path = self.dir.join(format!("{id}.eml"));
        let temp = self.dir.join(format!(
            ".{id}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        if let Err(err) = write_synced(&temp, &msg.raw).await {
            // Best effort: a leftover hidden temp file is harmless, so its removal error is moot.
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(self.io_error("write", &temp, &err));
        }
        if let Err(err) = tokio::fs::rename(&temp, &path).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(self.io_error("rename into", &path, &err));
        }

        tracing::debug!(transport = %self.name, message_id = %id, path = %path.display(), "message written to outbox");
        Ok(Receipt {
            provider_message_id: None,
            response: path.display().to_string(),
        })
    }

    /// Local I/O failures (disk full, permissions being fixed) may go away: transient.
    fn io_error(&self, action: &str, path: &Path, err: &std::io::Error) -> SendError {
        SendError::transient(format!(
            "outbox {}: cannot {action} {}: {err}",
            self.name,
            path.display()
        ))
    }
}

/// Writes and fsyncs, so the rename never publishes a file whose contents are still in flight.
async fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    file.write_all(bytes).await?;
    file.sync_all().await
}
