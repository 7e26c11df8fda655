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
    /// The host's end of each namespace's veth, by namespace.
    host_end: Vec<(String, String)>,
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
            host_end: Vec::new(),
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
        self.host_end.push((ns.clone(), h.clone()));
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

impl Lan {
    fn host_end(&self, ns: &str) -> &str {
        self.host_end
            .iter()
            .find(|(n, _)| n == ns)
            .map(|(_, h)| h.as_str())
            .unwrap_or_else(|| panic!("no namespace {ns} on this LAN"))
    }

    /// Cuts namespace `ns` off the LAN (its link down: nothing in or out).
    pub fn cut(&self, ns: &str) {
        ip(&["link", "set", self.host_end(ns), "down"]);
    }

    /// Joins it again.
    pub fn heal(&self, ns: &str) {
        ip(&["link", "set", self.host_end(ns), "up"]);
    }

    /// Cuts namespace `ns` off the addresses `ips` only (blackhole routes inside it), or
    /// joins them again.
    pub fn cut_from(&self, ns: &str, ips: &[String], cut: bool) {
        for a in ips {
            ip(&[
                "netns",
                "exec",
                ns,
                "ip",
                "route",
                if cut { "add" } else { "del" },
                "blackhole",
                &format!("{a}/32"),
            ]);
        }
    }
}

/// A member of a 3-member etcd cluster in a namespace of its own on the LAN.
pub struct LanEtcd {
    child: Option<std::process::Child>,
    /// Its address on the LAN.
    pub ip: String,
    args: Vec<String>,
    ns: String,
}

impl LanEtcd {
    fn spawn(&mut self) {
        self.child = Some(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(crate::etcd::etcd_bin())
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start an etcd member"),
        );
    }

    /// SIGKILLs it (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for LanEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Lan {
    /// Three etcd members, each in a namespace of its own, data under `dir`; returns them and
    /// the `--catalog` URL naming all three. Waits until the cluster has a leader.
    pub fn etcd3(&mut self, dir: &Path) -> (Vec<LanEtcd>, String) {
        let sites: Vec<LanSite> = (1..=3).map(|i| self.site(&format!("etcd-{i}"))).collect();
        let initial: Vec<String> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| format!("e{}=http://{}:2380", i + 1, s.ip))
            .collect();
        let mut members = Vec::new();
        for (i, s) in sites.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let args = vec![
                "--name".to_owned(),
                name.clone(),
                "--data-dir".into(),
                dir.join(format!("etcd-{name}")).display().to_string(),
                "--listen-client-urls".into(),
                format!("http://{}:2379", s.ip),
                "--advertise-client-urls".into(),
                format!("http://{}:2379", s.ip),
                "--listen-peer-urls".into(),
                format!("http://{}:2380", s.ip),
                "--initial-advertise-peer-urls".into(),
                format!("http://{}:2380", s.ip),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-state".into(),
                "new".into(),
                "--log-level".into(),
                "error".into(),
            ];
            let mut m = LanEtcd {
                child: None,
                ip: s.ip.clone(),
                args,
                ns: s.ns.clone(),
            };
            m.spawn();
            members.push(m);
        }
        let endpoints: Vec<String> = members.iter().map(|m| format!("{}:2379", m.ip)).collect();
        let t = std::time::Instant::now();
        loop {
            let ok = Command::new("etcdctl")
                .args(["--endpoints", &endpoints.join(","), "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "the 3-member etcd did not become healthy"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        (members, format!("etcd://{}", endpoints.join(",")))
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

    /// Its namespace.
    pub fn ns(&self) -> &str {
        &self.ns
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
