//! A LAN of a test's own: a bridge on the host and one network namespace per site, each joined
//! to the bridge by a veth pair, so that sites reach each other (and etcd, on the host's
//! address on the bridge) through real network stacks. The LAN has its own cell keys, each
//! site's certificate naming its address there. Root only (CI is); everything goes on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::harness::{pager_bin, site_args, Pager};
use crate::netns::ip;

/// A bridge and the namespaces on it.
pub struct Lan {
    bridge: String,
    /// The host's address on the bridge (where etcd listens).
    pub host_ip: String,
    net: String,
    tag: String,
    keys: PathBuf,
    namespaces: Vec<String>,
    links: Vec<String>,
}

/// A site's place on the LAN.
pub struct LanSite {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: String,
    /// `--keys DIR --site NAME`: its certificate, valid for its address.
    pub key_args: Vec<String>,
}

impl Lan {
    /// A new LAN; its keys under `dir`.
    pub fn new(dir: &Path) -> Lan {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{k}", pid % 10_000);
        // 10.(100+k).X.0/24: X from the process, so that test processes do not collide.
        let net = format!("10.{}.{}", 100 + k % 100, pid % 250);
        let lan = Lan {
            bridge: format!("clb{tag}"),
            host_ip: format!("{net}.1"),
            net,
            tag,
            keys: dir.join("lan-keys"),
            namespaces: Vec::new(),
            links: Vec::new(),
        };
        let _ = Command::new("ip")
            .args(["link", "del", &lan.bridge])
            .output();
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.host_ip),
            "dev",
            &lan.bridge,
        ]);
        ip(&["link", "set", &lan.bridge, "up"]);
        let st = Command::new(pager_bin())
            .args(["keys", "init"])
            .arg(&lan.keys)
            .stdout(Stdio::null())
            .status()
            .expect("pager keys init");
        assert!(st.success(), "pager keys init failed");
        lan
    }

    /// A namespace for site `name` on the LAN, and its certificate.
    pub fn site(&mut self, name: &str) -> LanSite {
        let i = self.namespaces.len() + 2;
        let ns = format!("clu-{}-{}", self.tag, i);
        let (h, n) = (
            format!("clv{}h{i}", self.tag),
            format!("clv{}n{i}", self.tag),
        );
        let addr = format!("{}.{i}", self.net);
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
        self.links.push(h.clone());
        ip(&["link", "set", &n, "netns", &ns]);
        ip(&["link", "set", &h, "master", &self.bridge]);
        ip(&["link", "set", &h, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{addr}/24"), "dev", &n]);
        inside(&["link", "set", &n, "up"]);
        inside(&["link", "set", "lo", "up"]);
        if !self.keys.join(format!("{name}.crt")).exists() {
            let st = Command::new(pager_bin())
                .args(["keys", "issue"])
                .arg(&self.keys)
                .args([name, "--host", &addr])
                .stdout(Stdio::null())
                .status()
                .expect("pager keys issue");
            assert!(st.success(), "pager keys issue {name} failed");
        }
        LanSite {
            ns,
            ip: addr,
            key_args: vec![
                "--keys".into(),
                self.keys.display().to_string(),
                "--site".into(),
                name.into(),
            ],
        }
    }
}

impl Lan {
    /// Starts a pager on `root` as a site of the cell whose catalog is `catalog`, in a
    /// namespace of its own (named `site-` and the root's directory name), listening on a free
    /// port, with a lease of `ttl` seconds and requests to other sites waiting at most
    /// `remote_timeout` seconds.
    pub fn pager(&mut self, root: &Path, catalog: &str, ttl: u64, remote_timeout: u64) -> Pager {
        let name = format!(
            "site-{}",
            root.file_name().unwrap_or_default().to_string_lossy()
        );
        let at = self.site(&name);
        let listen = format!("{}:{}", at.ip, crate::etcd::free_port());
        let mut args = site_args(catalog, &listen, ttl, remote_timeout);
        args.extend(at.key_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Pager::start_in(&at.ns, &at.ip, root, 1024, &args)
    }
}

/// A backup server (`pager backup-server`) in a namespace of its own on the LAN.
pub struct LanBackup {
    child: std::process::Child,
    /// Its root.
    pub root: PathBuf,
    /// Where it listens, `IP:PORT`.
    pub addr: String,
    ns: String,
    key_args: Vec<String>,
}

impl LanBackup {
    fn spawn(&mut self) {
        self.child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(pager_bin())
            .args(["backup-server", "--root"])
            .arg(&self.root)
            .args(["--listen", &self.addr])
            .args(&self.key_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start a backup server");
        crate::harness::wait_listening(&self.addr);
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same root and address.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for LanBackup {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Lan {
    /// Starts a backup server called `name` on `root`, in a namespace of its own.
    pub fn backup(&mut self, root: &Path, name: &str) -> LanBackup {
        let at = self.site(name);
        let mut b = LanBackup {
            child: Command::new("true").spawn().expect("true"),
            root: root.to_owned(),
            addr: format!("{}:{}", at.ip, crate::etcd::free_port()),
            ns: at.ns,
            key_args: at.key_args,
        };
        b.spawn();
        b
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
