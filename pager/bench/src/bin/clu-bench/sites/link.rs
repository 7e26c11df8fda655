//! The benchmark's network: a namespace for site B joined to the host by a veth pair, shaped
//! like a LAN on demand (`tc qdisc tbf rate 1gbit` on both ends), and user-space relays that
//! add a fixed delay each way (this kernel has no `netem`). Everything is removed on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::Res;

fn ip(args: &[&str]) -> Res<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// The namespace and its link.
pub struct Link {
    /// The namespace's name.
    pub ns: String,
    host_if: String,
    ns_if: String,
    /// The host's address on the link.
    pub host_ip: String,
    /// The namespace's address.
    pub ns_ip: String,
}

impl Link {
    /// A new namespace and link (root only).
    pub fn new() -> Res<Link> {
        let pid = std::process::id();
        let l = Link {
            ns: format!("clu-bench-{pid}"),
            host_if: format!("cb{}h", pid % 100_000),
            ns_if: format!("cb{}n", pid % 100_000),
            host_ip: "10.79.0.1".into(),
            ns_ip: "10.79.0.2".into(),
        };
        ip(&["netns", "add", &l.ns])?;
        ip(&[
            "link", "add", &l.host_if, "type", "veth", "peer", "name", &l.ns_if,
        ])?;
        ip(&["link", "set", &l.ns_if, "netns", &l.ns])?;
        ip(&["addr", "add", "10.79.0.1/30", "dev", &l.host_if])?;
        ip(&["link", "set", &l.host_if, "up"])?;
        l.inside(&["ip", "addr", "add", "10.79.0.2/30", "dev", &l.ns_if])?;
        l.inside(&["ip", "link", "set", &l.ns_if, "up"])?;
        l.inside(&["ip", "link", "set", "lo", "up"])?;
        Ok(l)
    }

    fn inside(&self, args: &[&str]) -> Res<()> {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command run in the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Shapes both directions like a 1 Gbit/s LAN (`tbf`), or removes the shaping.
    pub fn shape(&self, on: bool) -> Res<()> {
        let tc = |inside: bool, dev: &str| -> Res<()> {
            let mut c = if inside {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.ns, "tc"]);
                c
            } else {
                Command::new("tc")
            };
            if on {
                c.args(["qdisc", "replace", "dev", dev, "root", "tbf"])
                    .args(["rate", "1gbit", "burst", "128kb", "latency", "10ms"]);
            } else {
                c.args(["qdisc", "del", "dev", dev, "root"]);
            }
            let out = c.output()?;
            if on && !out.status.success() {
                return Err(format!(
                    "tc on {dev}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
                .into());
            }
            Ok(())
        };
        tc(false, &self.host_if)?;
        tc(true, &self.ns_if)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A relay on the host: every connection to it is forwarded to `target`, each chunk held
/// for the current delay in each direction. Returns its address.
pub fn relay(host: &str, target: String, delay: Arc<AtomicU64>) -> Res<String> {
    let listener = TcpListener::bind((host, 0))?;
    let addr = listener.local_addr()?.to_string();
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                for s in [&inbound, &outbound] {
                    let _ = s.set_nodelay(true);
                }
                let (Ok(i2), Ok(o2)) = (inbound.try_clone(), outbound.try_clone()) else {
                    continue;
                };
                pump(inbound, o2, delay.clone());
                pump(outbound, i2, delay.clone());
            }
        })?;
    Ok(addr)
}

/// Copies `from` to `to`, each chunk written `delay` microseconds after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = std::thread::Builder::new()
        .name("relay-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let due =
                            Instant::now() + Duration::from_micros(delay.load(Ordering::Relaxed));
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    let _ = std::thread::Builder::new()
        .name("relay-write".into())
        .spawn(move || {
            for (due, chunk) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}
