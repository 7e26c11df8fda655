//! The references measured on the same link as the pages: a plain TCP peer in B's namespace
//! (`clu-bench sites-peer`) that answers a request of `n` bytes (`D`: it sends `n` bytes back;
//! `S`: it reads `n` bytes, then answers one byte), and the client side of it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use super::Res;

/// Serves requests on `listen` until killed, one thread per connection.
pub fn serve(listen: &str) -> Res<()> {
    let listener = TcpListener::bind(listen)?;
    for s in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let _ = answer(s);
        });
    }
    Ok(())
}

fn answer(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head)?;
        let mut n = u64::from_le_bytes(head[1..].try_into().unwrap_or([0; 8])) as usize;
        match head[0] {
            b'D' => {
                while n > 0 {
                    let k = n.min(buf.len());
                    s.write_all(&buf[..k])?;
                    n -= k;
                }
            }
            b'S' => {
                while n > 0 {
                    let k = n.min(buf.len());
                    s.read_exact(&mut buf[..k])?;
                    n -= k;
                }
                s.write_all(&[1])?;
            }
            _ => return Ok(()),
        }
    }
}

/// A connection to the peer.
pub struct Peer(TcpStream);

impl Peer {
    /// Connects to the peer (through the relay).
    pub fn connect(addr: &str) -> Res<Peer> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Peer(s))
    }

    /// Microseconds to ask for `n` bytes and receive them.
    pub fn download(&mut self, n: usize) -> Res<f64> {
        let t = Instant::now();
        let mut head = vec![b'D'];
        head.extend_from_slice(&(n as u64).to_le_bytes());
        self.0.write_all(&head)?;
        let mut buf = vec![0u8; n.min(1 << 20)];
        let mut left = n;
        while left > 0 {
            let k = left.min(buf.len());
            self.0.read_exact(&mut buf[..k])?;
            left -= k;
        }
        Ok(t.elapsed().as_secs_f64() * 1e6)
    }

    /// Microseconds to send `n` bytes and receive the one-byte answer.
    pub fn upload(&mut self, n: usize) -> Res<f64> {
        let t = Instant::now();
        let mut msg = vec![b'S'];
        msg.extend_from_slice(&(n as u64).to_le_bytes());
        msg.resize(9 + n, 7);
        self.0.write_all(&msg)?;
        let mut one = [0u8; 1];
        self.0.read_exact(&mut one)?;
        Ok(t.elapsed().as_secs_f64() * 1e6)
    }
}
