//! A byte stream with a read buffer and deadlines, shared by the SNPP and TAP sessions.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The most bytes kept unread; a peer that sends more without a line end is broken.
const MAX_BUFFERED: usize = 16 * 1024;

/// Why a read gave nothing.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The peer closed the stream.
    Closed,
    Io(io::Error),
}

impl ReadError {
    pub(crate) fn describe(&self) -> String {
        match self {
            ReadError::Timeout => "no answer in time".into(),
            ReadError::Closed => "connection closed by peer".into(),
            ReadError::Io(e) => format!("read failed: {e}"),
        }
    }
}

pub(crate) struct Wire<S> {
    io: S,
    buf: Vec<u8>,
    /// Mask every byte read to 7 bits (TAP lines are 7E1; a port that passes the parity bit
    /// through must not confuse the parser).
    seven_bit: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(io: S, seven_bit: bool) -> Self {
        Self {
            io,
            buf: Vec::new(),
            seven_bit,
        }
    }

    pub(crate) fn into_inner(self) -> S {
        self.io
    }

    /// The bytes read and not consumed yet.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drop the first `n` buffered bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }

    /// Read at least one more byte into the buffer, or fail at `deadline`.
    pub(crate) async fn fill(&mut self, deadline: Instant) -> Result<(), ReadError> {
        match tokio::time::timeout_at(deadline, self.read_some()).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Whatever the peer has already sent, without waiting: `Ok(true)` when bytes arrived,
    /// `Ok(false)` when nothing is pending, an error when the stream is closed or broken.
    pub(crate) async fn poll_now(&mut self) -> Result<bool, ReadError> {
        let mut got = false;
        loop {
            // `timeout` polls the read once before it looks at the (already passed) deadline,
            // so data that is already there is taken; the read itself is cancel safe.
            match tokio::time::timeout(std::time::Duration::ZERO, self.read_some()).await {
                Ok(Ok(())) => got = true,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(got),
            }
        }
    }

    async fn read_some(&mut self) -> Result<(), ReadError> {
        if self.buf.len() >= MAX_BUFFERED {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "peer sent too much without a line end",
            )));
        }
        let mut chunk = [0u8; 512];
        let n = self.io.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        if self.seven_bit {
            self.buf.extend(chunk[..n].iter().map(|b| b & 0x7f));
        } else {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Read one line ending in LF (a CR before it is dropped), as lossy UTF-8.
    pub(crate) async fn read_line(&mut self, deadline: Instant) -> Result<String, ReadError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.fill(deadline).await?;
        }
    }

    /// Write everything and flush, failing at `deadline`.
    pub(crate) async fn write_all(&mut self, bytes: &[u8], deadline: Instant) -> io::Result<()> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// Best-effort shutdown of the write side.
    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.io.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn lines_and_pending_bytes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Wire::new(a, false);
        assert!(!w.poll_now().await.unwrap());
        b.write_all(b"220 ready\r\n250 x").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(w.read_line(deadline).await.unwrap(), "220 ready");
        assert!(matches!(
            w.read_line(Instant::now() + Duration::from_millis(20))
                .await
                .unwrap_err(),
            ReadError::Timeout
        ));
        b.write_all(b"\n").await.unwrap();
        assert_eq!(w.read_line(deadline).await.unwrap(), "250 x");
        drop(b);
        assert!(matches!(w.poll_now().await.unwrap_err(), ReadError::Closed));
    }

    #[tokio::test]
    async fn seven_bit_masks_parity() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Wire::new(a, true);
        b.write_all(&[0x86, b'I' | 0x80]).await.unwrap();
        w.fill(Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(w.buffered(), &[0x06, b'I']);
        w.consume(1);
        assert_eq!(w.buffered(), b"I");
    }
}
