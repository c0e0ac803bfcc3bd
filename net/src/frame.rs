//! Kafka framing: every request and response is a 4-byte big-endian size followed by that
//! many bytes. The size is checked against `socket.request.max.bytes` before anything is
//! allocated, so a client claiming 2 GiB costs nothing but its connection.

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

/// Reads one frame. `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<BytesMut>, FrameError> {
    match read_frame_size(reader, max_bytes).await? {
        Some(size_bytes) => read_frame_body(reader, size_bytes).await.map(Some),
        None => Ok(None),
    }
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

/// Reads the `size_bytes` of a frame after its size prefix.
pub async fn read_frame_body<R: AsyncRead + Unpin>(reader: &mut R, size_bytes: usize) -> Result<BytesMut, FrameError> {
    let mut frame = BytesMut::zeroed(size_bytes);
    reader.read_exact(&mut frame).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(frame)
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

    fn read(bytes: &[u8], max: usize) -> Result<Option<BytesMut>, FrameError> {
        futures_lite::future::block_on(read_frame(&mut futures_lite::io::Cursor::new(bytes.to_vec()), max))
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
