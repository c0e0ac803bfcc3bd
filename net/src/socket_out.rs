//! Writes a response, as [`Chunk`]s, to a connection's socket without gathering it into one
//! buffer: each run of in-memory chunks goes out with vectored `sendmsg(2)` calls (one per
//! run while the socket takes everything; at most [`IOVECS_MAX`] buffers per call), and
//! each file slice by splice on the shard's side ring (file → pipe → socket: the bytes
//! never enter user space).
//!
//! The socket must be non-blocking (the listener sets O_NONBLOCK on every accepted
//! connection): a full socket returns EAGAIN, and the write then waits for room through
//! the connection's own stream (glommio's send waits for writability), which also sends
//! the first bytes that fit.
//!
//! Runs on the shard that owns the connection.

use std::io;
use std::os::fd::RawFd;

use corelog_engine::side_ring::SideRing;
use futures_lite::{AsyncWrite, AsyncWriteExt};

use crate::handlers::fetch_response::Chunk;

/// Buffers handed to one `sendmsg` (Linux's `IOV_MAX` is 1024).
pub const IOVECS_MAX: usize = 1024;

/// The socket of one connection and the means to write to it.
pub struct SocketOut<'a> {
    pub fd: RawFd,
    pub ring: &'a SideRing,
}

impl SocketOut<'_> {
    /// Writes every chunk, in order. `stream` is the same socket, used only to wait for
    /// room when the socket is full.
    pub async fn write_chunks<W: AsyncWrite + Unpin>(&self, stream: &mut W, chunks: &[Chunk]) -> io::Result<()> {
        let mut at = 0;
        while at < chunks.len() {
            match &chunks[at] {
                Chunk::File(slice) => {
                    if slice.len > 0 {
                        slice.splice_to_socket(self.ring, self.fd).await?;
                    }
                    at += 1;
                }
                Chunk::Memory(_) => {
                    let run = chunks[at..].iter().take_while(|c| matches!(c, Chunk::Memory(_))).count();
                    self.send_all(stream, &chunks[at..at + run]).await?;
                    at += run;
                }
            }
        }
        Ok(())
    }

    /// Sends a run of in-memory chunks with as few `sendmsg` calls as the socket allows.
    async fn send_all<W: AsyncWrite + Unpin>(&self, stream: &mut W, chunks: &[Chunk]) -> io::Result<()> {
        let buffers: Vec<&[u8]> = chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Memory(bytes) if !bytes.is_empty() => Some(&bytes[..]),
                _ => None,
            })
            .collect();
        // The first unsent byte: buffer index, and offset within that buffer.
        let (mut first, mut skip) = (0usize, 0usize);
        while first < buffers.len() {
            let sent = match send_vectored(self.fd, &buffers[first..], skip) {
                Ok(sent) => sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Waits for room, then sends what fits of the current buffer.
                    match stream.write(&buffers[first][skip..]).await? {
                        0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes")),
                        sent => sent,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            (first, skip) = advance(&buffers, first, skip, sent);
        }
        Ok(())
    }
}

/// Where the first unsent byte is after `sent` more bytes went out.
fn advance(buffers: &[&[u8]], mut first: usize, mut skip: usize, mut sent: usize) -> (usize, usize) {
    while first < buffers.len() && sent > 0 {
        let left = buffers[first].len() - skip;
        if sent < left {
            return (first, skip + sent);
        }
        sent -= left;
        first += 1;
        skip = 0;
    }
    assert_eq!(sent, 0, "the socket took more bytes than were offered");
    (first, skip)
}

/// One non-blocking `sendmsg` of `buffers` (the first from `skip` on), at most
/// [`IOVECS_MAX`] of them.
fn send_vectored(fd: RawFd, buffers: &[&[u8]], skip: usize) -> io::Result<usize> {
    let iovecs: Vec<libc::iovec> = buffers
        .iter()
        .take(IOVECS_MAX)
        .enumerate()
        .map(|(i, buffer)| {
            let part = if i == 0 { &buffer[skip..] } else { buffer };
            libc::iovec { iov_base: part.as_ptr() as *mut libc::c_void, iov_len: part.len() }
        })
        .collect();
    // SAFETY: a zeroed msghdr is valid (no address, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
    message.msg_iovlen = iovecs.len() as _;
    // SAFETY: every iovec points into a buffer borrowed for the duration of the call; the
    // kernel only reads them.
    let sent = unsafe { libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_walks_across_buffers() {
        let buffers: Vec<&[u8]> = vec![b"abc", b"de", b"fghi"];
        assert_eq!(advance(&buffers, 0, 0, 0), (0, 0));
        assert_eq!(advance(&buffers, 0, 0, 2), (0, 2));
        assert_eq!(advance(&buffers, 0, 0, 3), (1, 0));
        assert_eq!(advance(&buffers, 0, 1, 4), (2, 0));
        assert_eq!(advance(&buffers, 0, 1, 5), (2, 1));
        assert_eq!(advance(&buffers, 1, 1, 5), (3, 0));
    }

    #[test]
    #[should_panic(expected = "more bytes than were offered")]
    fn advance_refuses_more_than_offered() {
        let buffers: Vec<&[u8]> = vec![b"abc"];
        advance(&buffers, 0, 0, 4);
    }
}
