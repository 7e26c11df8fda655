//! A network namespace of a test's own, joined to the host's by a veth pair, so that a site
//! runs behind a real network stack and a partition is a link taken down. Root only (CI is);
//! the namespace and both ends of the pair go when it is dropped.

use std::process::Command;

/// A namespace and its link to the host.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    /// The host's end of the link.
    host_if: String,
    /// The namespace's end.
    ns_if: String,
    /// The host's address on the link.
    pub host_ip: String,
    /// The namespace's address on the link.
    pub ns_ip: String,
}

/// Runs `ip ARGS`, which must succeed.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A new namespace, `tag` telling it apart from the other namespaces of the same test
    /// process (0..=63), linked to the host by a /30.
    pub fn new(tag: u8) -> Netns {
        let pid = std::process::id();
        let name = format!("clu-{pid}-{tag}");
        let host_if = format!("cv{}h{tag}", pid % 100_000);
        let ns_if = format!("cv{}n{tag}", pid % 100_000);
        // 10.77.X.Y/30: X from the process, Y from the tag, so that concurrent test
        // processes and namespaces do not collide.
        let x = pid % 250;
        let y = u32::from(tag % 64) * 4;
        let (host_ip, ns_ip) = (
            format!("10.77.{x}.{}", y + 1),
            format!("10.77.{x}.{}", y + 2),
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let n = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        n
    }

    /// Cuts the link (a partition): the namespace's end goes down, so nothing crosses and
    /// nothing answers (no reset, no unreachable: packets are lost, as on a cut cable), and
    /// the host keeps its route to the namespace, so nothing leaks elsewhere.
    pub fn down(&self) {
        self.set_link("down");
    }

    /// Restores the link.
    pub fn up(&self) {
        self.set_link("up");
    }

    fn set_link(&self, state: &str) {
        let name = &self.name;
        ip(&[
            "netns",
            "exec",
            name,
            "ip",
            "link",
            "set",
            &self.ns_if,
            state,
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the host's.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
