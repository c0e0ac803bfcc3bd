//! Kafka framing: every request and response is a 4-byte big-endian size followed by that
//! many bytes. The size is checked against `socket.request.max.bytes` before anything is
//! allocated, so a client claiming 2 GiB costs nothing but its connection.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};

/// Why a connection's framing failed; each ends the connection (Kafka does the same).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame size {size} is not positive")]
    NonPositive { size: i32 },
    #[error("frame of {size} bytes exceeds socket.request.max.bytes = {max_bytes}")]
    TooLarge { size: i32, max_bytes: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the frame did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error(
        "a {size_bytes}-byte frame arrived at {received} bytes in {window:?} while others waited for request memory"
    )]
    Slow { size_bytes: usize, received: usize, window: Duration },
}

/// Checks a frame size prefix.
pub fn check_size(size: i32, max_bytes: usize) -> Result<usize, FrameError> {
    if size <= 0 {
        return Err(FrameError::NonPositive { size });
    }
    let size_bytes = size as usize;
    if size_bytes > max_bytes {
        return Err(FrameError::TooLarge { size, max_bytes });
    }
    Ok(size_bytes)
}

/// Reads and checks a frame's size prefix. `Ok(None)` when the peer closed the connection
/// between frames.
pub async fn read_frame_size<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<usize>, FrameError> {
    let mut size = [0u8; 4];
    let mut filled = 0;
    while filled < 4 {
        let n = reader.read(&mut size[filled..]).await?;
        if n == 0 {
            return if filled == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        filled += n;
    }
    check_size(i32::from_be_bytes(size), max_bytes).map(Some)
}

/// How long a frame's body may take to arrive (the connection's limits).
pub struct BodyPace<'a> {
    /// The whole body, from its size prefix on.
    pub timeout: Duration,
    /// While `contended()` (others wait for request memory), a body arriving at less than
    /// `slow_min_bytes` per `slow_window` is given up.
    pub slow_window: Duration,
    pub slow_min_bytes: usize,
    pub contended: &'a dyn Fn() -> bool,
}

/// Bytes zeroed for a read of a frame body that has to wait for data.
const WAIT_READ_BYTES: usize = 64 << 10;

/// Reads the `size_bytes` of a frame after its size prefix, at the pace `pace` allows. A read
/// that completes at once (the usual case) sets no timer. Dropping a pending read is safe with
/// glommio's streams: they read on readiness, into the caller's buffer.
///
/// With `socket` (the fd `reader` reads from), bytes already received go straight into the
/// frame's spare capacity with a non-blocking `recv(2)`: a large frame is not zeroed first
/// (that cost a tenth of a shard's time at full produce rate). Only a read that has to wait
/// goes through `reader`, into a small zeroed window.
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    socket: Option<RawFd>,
    size_bytes: usize,
    pace: &BodyPace<'_>,
) -> Result<BytesMut, FrameError> {
    let started = Instant::now();
    let deadline = started + pace.timeout;
    let window = pace.slow_window.max(Duration::from_millis(1));
    let mut frame = BytesMut::with_capacity(size_bytes);
    let (mut window_start, mut window_filled) = (started, 0usize);
    while frame.len() < size_bytes {
        let now = Instant::now();
        if now >= deadline {
            return Err(FrameError::TimedOut(pace.timeout));
        }
        let filled = frame.len();
        let received = match socket {
            Some(fd) => recv_into_capacity(fd, &mut frame, size_bytes)?,
            None => 0,
        };
        if received > 0 {
            continue;
        }
        frame.resize(filled + (size_bytes - filled).min(WAIT_READ_BYTES), 0);
        let mut read = reader.read(&mut frame[filled..]);
        let read = match futures_lite::future::poll_once(&mut read).await {
            Some(read) => Some(read),
            None => {
                let wait = (window_start + window).min(deadline).saturating_duration_since(now);
                glommio::timer::timeout(wait, async { Ok(read.await) }).await.ok()
            }
        };
        let read = match read {
            Some(Ok(0)) => return Err(FrameError::Truncated),
            Some(Ok(n)) => n,
            Some(Err(error)) => return Err(FrameError::Io(error)),
            None => 0,
        };
        frame.truncate(filled + read);
        let filled = frame.len();
        let now = Instant::now();
        if now >= window_start + window {
            let received = filled - window_filled;
            let wanted = pace.slow_min_bytes.min(size_bytes - window_filled);
            if received < wanted && (pace.contended)() {
                return Err(FrameError::Slow { size_bytes, received, window });
            }
            (window_start, window_filled) = (now, filled);
        }
    }
    Ok(frame)
}

/// One non-blocking `recv(2)` into the spare capacity of `frame`, up to `size_bytes` in all.
/// Ok(0) when nothing is there yet; a closed connection is `Truncated`.
fn recv_into_capacity(fd: RawFd, frame: &mut BytesMut, size_bytes: usize) -> Result<usize, FrameError> {
    let filled = frame.len();
    let spare = &mut frame.spare_capacity_mut()[..size_bytes - filled];
    // SAFETY: recv writes at most `spare.len()` bytes into the buffer's own spare capacity.
    let received = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
    match received {
        0 => Err(FrameError::Truncated),
        n if n > 0 => {
            // SAFETY: the kernel initialised `n` bytes right after the length.
            unsafe { frame.set_len(filled + n as usize) };
            Ok(n as usize)
        }
        _ => {
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
                _ => Err(FrameError::Io(error)),
            }
        }
    }
}

/// Prefixes `body` with its size.
pub fn encode_frame(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32(body.len() as i32);
    out.put_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole frame (size prefix, then body at an unhurried pace) from `bytes`.
    fn read(bytes: &[u8], max: usize) -> Result<Option<BytesMut>, FrameError> {
        let mut reader = futures_lite::io::Cursor::new(bytes.to_vec());
        let pace = BodyPace {
            timeout: Duration::from_secs(60),
            slow_window: Duration::from_secs(60),
            slow_min_bytes: 0,
            contended: &|| false,
        };
        futures_lite::future::block_on(async {
            match read_frame_size(&mut reader, max).await? {
                Some(size) => read_frame_body(&mut reader, None, size, &pace).await.map(Some),
                None => Ok(None),
            }
        })
    }

    #[test]
    fn frames_round_trip_and_bad_sizes_are_refused() {
        let frame = encode_frame(b"hello");
        assert_eq!(read(&frame, 100).unwrap().unwrap(), &b"hello"[..]);
        assert!(read(&[], 100).unwrap().is_none());
        assert!(matches!(read(&[0, 0], 100), Err(FrameError::Truncated)));
        assert!(matches!(read(&[0, 0, 0, 9, 1], 100), Err(FrameError::Truncated)));
        assert!(matches!(read(&(-1i32).to_be_bytes(), 100), Err(FrameError::NonPositive { .. })));
        assert!(matches!(read(&0i32.to_be_bytes(), 100), Err(FrameError::NonPositive { .. })));
        let claim_2gib = i32::MAX.to_be_bytes();
        assert!(matches!(read(&claim_2gib, 100 << 20), Err(FrameError::TooLarge { .. })));
    }
}
