//! The file backend: NDJSON lines appended to a local file (`-`: stdout), the
//! local stand-in for a cloud backend. Not HTTP, so it is a `Transport` of
//! its own: the batch is written as the route carries it.
use super::backend::{BuildError, ProbeError, SendError, Sent, Transport};
use crate::config::{FileConfig, HealthCheckConfig};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

pub struct FileTransport {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl FileTransport {
    /// Creates the file's directory now, so that a path that cannot be written is an error at start.
    pub fn new(name: &str, cfg: &FileConfig) -> Result<FileTransport, BuildError> {
        let path = cfg.path.clone();
        if path.as_os_str() != "-" {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| BuildError::Directory {
                    backend: name.to_string(),
                    dir: dir.display().to_string(),
                    source,
                })?;
            }
        }
        Ok(FileTransport {
            path,
            file: Mutex::new(None),
        })
    }

    async fn append(&self, body: Bytes) -> Result<(), SendError> {
        let io_err = |source: std::io::Error| SendError::Io {
            path: self.path.display().to_string(),
            source,
        };
        if self.path.as_os_str() == "-" {
            let mut out = tokio::io::stdout();
            out.write_all(&body).await.map_err(io_err)?;
            return out.flush().await.map_err(io_err);
        }
        let mut guard = self.file.lock().await;
        if guard.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(io_err)?;
            *guard = Some(f);
        }
        let f = guard.as_mut().unwrap();
        let result = async {
            f.write_all(&body).await?;
            f.flush().await
        }
        .await;
        if let Err(e) = result {
            *guard = None; // reopen next time (the file may have been rotated away)
            return Err(io_err(e));
        }
        Ok(())
    }
}

impl Transport for FileTransport {
    fn encode(&self, ndjson: Vec<u8>, _tenant: &str) -> Bytes {
        Bytes::from(ndjson)
    }

    fn send<'a>(
        &'a self,
        body: Bytes,
        _events: usize,
        _upstream_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        self.append(body)
            .map(|r| r.map(|()| Sent::default()))
            .boxed()
    }

    /// Configs refuse a health check on a file backend; were one run, it would pass.
    fn probe<'a>(&'a self, _check: &'a HealthCheckConfig) -> BoxFuture<'a, Result<(), ProbeError>> {
        futures::future::ready(Ok(())).boxed()
    }
}
