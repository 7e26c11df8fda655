//! Framed messages with attached file descriptors over a Unix stream socket: the I/O side of
//! [`crate::protocol`], used by both the shim and the pager.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::protocol::{frame_len, ProtoError, MAX_FRAME};
use clu_sys::scm;

/// Why a message could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The bytes are not a message.
    #[error("malformed message: {0}")]
    Proto(#[from] ProtoError),
}

/// One end of a connection.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Channel {
        Channel { stream }
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends a whole frame (from `proto`'s `encode`) with `fds` attached.
    pub fn send(&self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let mut sent = 0;
        while sent < frame.len() {
            let attach = if sent == 0 { fds } else { &[] };
            match scm::send(self.stream.as_fd(), &frame[sent..], attach) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(ChannelError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one frame's payload and the descriptors that came with it. `Closed` at a clean
    /// end of stream between frames.
    pub fn recv(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ChannelError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < header.len() {
            match scm::recv(self.stream.as_fd(), &mut header[got..]) {
                Ok((0, _)) => return Err(ChannelError::Closed),
                Ok((n, more)) => {
                    got += n;
                    fds.extend(more);
                    if fds.len() > scm::MAX_FDS {
                        return Err(ProtoError::Field("too many file descriptors").into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(ChannelError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
        let len = frame_len(header)?;
        debug_assert!(len <= MAX_FRAME);
        let mut payload = vec![0u8; len];
        (&self.stream).read_exact(&mut payload).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ChannelError::Closed
            } else {
                ChannelError::Io(e)
            }
        })?;
        Ok((payload, fds))
    }
}
