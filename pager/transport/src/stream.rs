//! A connection between sites: TLS (either side) or, for loopback experiments, plaintext.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};

enum Kind {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

/// A connection to or from another site. Reading and writing go through one value (TLS keeps
/// one state for both directions): wrap it in a `BufReader` and write through `get_mut`.
pub struct Stream(Kind);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.0 {
            Kind::Plain(_) => "plain",
            Kind::Client(_) => "tls client",
            Kind::Server(_) => "tls server",
        };
        f.debug_tuple("Stream").field(&kind).finish()
    }
}

impl Stream {
    pub(crate) fn plain(tcp: TcpStream) -> Stream {
        Stream(Kind::Plain(tcp))
    }

    pub(crate) fn client(s: StreamOwned<ClientConnection, TcpStream>) -> Stream {
        Stream(Kind::Client(Box::new(s)))
    }

    pub(crate) fn server(s: StreamOwned<ServerConnection, TcpStream>) -> Stream {
        Stream(Kind::Server(Box::new(s)))
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.0 {
            Kind::Plain(t) => t,
            Kind::Client(s) => &s.sock,
            Kind::Server(s) => &s.sock,
        }
    }

    /// Bounds how long a read may wait.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    /// Whether a read would find something (data, or the end of the stream) within
    /// `timeout`: bytes TLS already decrypted, or bytes on the socket (then a read may still
    /// wait for the rest of a TLS record, as any read does).
    pub fn readable_within(&mut self, timeout: Duration) -> io::Result<bool> {
        let decrypted = match &mut self.0 {
            Kind::Plain(_) => 0,
            Kind::Client(s) => s
                .conn
                .process_new_packets()
                .map_err(io::Error::other)?
                .plaintext_bytes_to_read(),
            Kind::Server(s) => s
                .conn
                .process_new_packets()
                .map_err(io::Error::other)?
                .plaintext_bytes_to_read(),
        };
        if decrypted > 0 {
            return Ok(true);
        }
        let tcp = self.tcp();
        let before = tcp.read_timeout()?;
        tcp.set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        let peeked = tcp.peek(&mut [0u8; 1]);
        tcp.set_read_timeout(before)?;
        match peeked {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Kind::Plain(t) => t.read(buf),
            Kind::Client(s) => s.read(buf),
            Kind::Server(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            Kind::Plain(t) => t.write(buf),
            Kind::Client(s) => s.write(buf),
            Kind::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Kind::Plain(t) => t.flush(),
            Kind::Client(s) => s.flush(),
            Kind::Server(s) => s.flush(),
        }
    }
}
