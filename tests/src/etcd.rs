//! A real etcd server for a test: one member (or three) on free loopback ports, data in a
//! scratch directory, killed (SIGKILL) and removed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    /// Its client endpoint, `127.0.0.1:PORT`.
    pub endpoint: String,
    dir: PathBuf,
}

/// The `etcd` binary: `CLU_ETCD`, or `etcd` on the PATH (Debian's `etcd-server`, which
/// `scripts/setup` installs).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("CLU_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl Etcd {
    /// Starts a single-member etcd with its data under `dir`, and waits until it serves.
    pub fn start(dir: &Path) -> Etcd {
        Self::start_on(dir, "127.0.0.1")
    }

    /// The same, listening for clients on `host` (an address of the host's end of a test's
    /// namespace link, so that sites in namespaces reach it).
    pub fn start_on(dir: &Path, host: &str) -> Etcd {
        let (cp, pp) = (free_port(), free_port());
        let endpoint = format!("{host}:{cp}");
        let data = dir.join("etcd-data");
        let child = Command::new(etcd_bin())
            .args(["--name", "e1", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{endpoint}")])
            .args(["--advertise-client-urls", &format!("http://{endpoint}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pp}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{pp}"),
            ])
            .args(["--initial-cluster", &format!("e1=http://127.0.0.1:{pp}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (scripts/setup installs etcd-server)");
        let e = Etcd {
            child: Some(child),
            endpoint,
            dir: data,
        };
        e.wait_serving();
        e
    }

    /// Waits until the member answers `/health` with `"health":"true"` (it has a leader and
    /// serves requests), not only until its port accepts connections.
    fn wait_serving(&self) {
        use std::io::{Read, Write};
        let t = Instant::now();
        loop {
            let healthy = std::net::TcpStream::connect(&self.endpoint)
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                    write!(c, "GET /health HTTP/1.0\r\nHost: {}\r\n\r\n", self.endpoint)?;
                    let mut body = String::new();
                    c.read_to_string(&mut body)?;
                    Ok(body.contains("\"health\":\"true\""))
                })
                .unwrap_or(false);
            if healthy {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy on {}",
                self.endpoint
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `etcd://ENDPOINT`, as `--catalog` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }

    /// SIGKILLs it (its data stays until the drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
