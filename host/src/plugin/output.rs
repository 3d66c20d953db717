//! A capped in-memory sink for a plugin's stdout and stderr.
//!
//! Unlike wasmtime-wasi's `MemoryOutputPipe`, writing past the cap is not an
//! error for the guest (a chatty plugin must not trap because of its own
//! logging): the first `cap` bytes are kept, the rest are counted and dropped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The shared buffer of one stream.
#[derive(Clone, Debug)]
pub struct CappedPipe {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug, Default)]
struct Captured {
    buf: Vec<u8>,
    cap: usize,
    dropped: usize,
}

impl CappedPipe {
    /// A pipe that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        CappedPipe {
            inner: Arc::new(Mutex::new(Captured {
                cap,
                ..Default::default()
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = c.cap.saturating_sub(c.buf.len());
        let take = room.min(bytes.len());
        c.buf.extend_from_slice(&bytes[..take]);
        c.dropped += bytes.len() - take;
    }

    /// What was kept, lossily decoded, with a note of what was dropped.
    pub fn text(&self) -> String {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&c.buf).into_owned();
        if c.dropped > 0 {
            s.push_str(&format!("\n[{} more bytes dropped]", c.dropped));
        }
        s
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.buf.is_empty() && c.dropped == 0
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    //! The cap: kept bytes and the dropped count.
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let p = CappedPipe::new(4);
        p.push(b"abc");
        p.push(b"def");
        assert_eq!(p.text(), "abcd\n[2 more bytes dropped]");
        assert!(!p.is_empty());
        assert!(CappedPipe::new(1).is_empty());
    }
}
