//! Running the real pager and real clients as processes, and killing them.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The pager binary (`target/<profile>/pager`), built first if this test process has not yet
/// done so: it belongs to another package, which `cargo test -p clu-tests` would not rebuild.
pub fn pager_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let path = bin("pager");
    BUILT.call_once(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "-q", "-p", "pager", "--bin", "pager"]);
        if path.parent().is_some_and(|d| d.ends_with("release")) {
            cargo.arg("--release");
        }
        let st = cargo.status().expect("run cargo build -p pager");
        assert!(st.success(), "building the pager failed");
    });
    path
}

/// The cell's keys of this test process (a CA made once with `pager keys init`), and the
/// certificate of site `site` in it (made with `pager keys issue` the first time it is asked
/// for, valid for 127.0.0.1 and localhost). Returns the directory: `--keys DIR --site SITE`.
pub fn cell_keys(site: &str) -> PathBuf {
    cell_keys_for(site, &[])
}

/// The same, the certificate also valid for `hosts` (a site in a namespace of its own, at its
/// address there). A site's certificate is made once: ask with the same hosts every time.
pub fn cell_keys_for(site: &str, hosts: &[&str]) -> PathBuf {
    static CELL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    static ISSUE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = CELL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("clu-cell-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let st = Command::new(pager_bin())
            .args(["keys", "init"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("pager keys init");
        assert!(st.success(), "pager keys init failed");
        dir
    });
    let _one = ISSUE.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.join(format!("{site}.crt")).exists() {
        let mut issue = Command::new(pager_bin());
        issue.args(["keys", "issue"]).arg(dir).args([
            site,
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
        ]);
        for h in hosts {
            issue.args(["--host", h]);
        }
        let st = issue
            .stdout(Stdio::null())
            .status()
            .expect("pager keys issue");
        assert!(st.success(), "pager keys issue {site} failed");
    }
    dir.clone()
}

/// A site name for a storage root: `site-` and the root's directory name (`root-2` gives
/// `site-root-2`), so that a restarted pager keeps its name.
fn site_of(root: &Path) -> String {
    let name: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("site-{}", name.trim_matches('-'))
}

/// The `pager serve` options of a site of the cell whose catalog is `catalog` (an
/// `etcd://` URL): listening on `listen`, with a lease of `ttl` seconds and requests to other
/// sites waiting at most `remote_timeout` seconds.
pub fn site_args(catalog: &str, listen: &str, ttl: u64, remote_timeout: u64) -> Vec<String> {
    [
        "--catalog",
        catalog,
        "--listen",
        listen,
        "--lease-ttl",
        &ttl.to_string(),
        "--remote-timeout",
        &remote_timeout.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Waits until something listens on `addr` (a backup server that was just started).
pub fn wait_listening(addr: &str) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The scripted client.
pub fn tool_bin() -> PathBuf {
    bin("clu-tool")
}

fn bin(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps/<test>; binaries are in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name)
}

/// A running `pager serve`.
pub struct Pager {
    child: Child,
    /// Its storage root.
    pub root: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    budget: u64,
    env: Vec<(String, String)>,
    extra: Vec<String>,
    /// The network namespace it runs in, and its address there.
    ns: Option<(String, String)>,
}

impl Pager {
    /// Starts a pager on `root` with a resident budget of `budget` pages and waits until it
    /// answers on its socket.
    pub fn start(root: &Path, budget: u64) -> Pager {
        Self::start_with(root, budget, &[])
    }

    /// The same, with more `pager serve` options.
    pub fn start_with(root: &Path, budget: u64, extra: &[&str]) -> Pager {
        let socket = root.with_extension("sock");
        Self::start_at(root, &socket, budget, extra, &[], None)
    }

    /// The same, in network namespace `ns` where its address is `ip` (its certificate names
    /// that address too).
    pub fn start_in(ns: &str, ip: &str, root: &Path, budget: u64, extra: &[&str]) -> Pager {
        let socket = root.with_extension("sock");
        Self::start_at(
            root,
            &socket,
            budget,
            extra,
            &[],
            Some((ns.to_owned(), ip.to_owned())),
        )
    }

    /// The same, with environment variables (kept across [`Pager::restart`]).
    pub fn start_env(root: &Path, budget: u64, env: &[(&str, &str)]) -> Pager {
        let socket = root.with_extension("sock");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_at(root, &socket, budget, &[], &env, None)
    }

    fn start_at(
        root: &Path,
        socket: &Path,
        budget: u64,
        extra: &[&str],
        env: &[(String, String)],
        ns: Option<(String, String)>,
    ) -> Pager {
        Self::try_start_at(root, socket, budget, extra, env, ns).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_at(
        root: &Path,
        socket: &Path,
        budget: u64,
        extra: &[&str],
        env: &[(String, String)],
        ns: Option<(String, String)>,
    ) -> Result<Pager, String> {
        // The cell's keys, unless the test gives its own.
        let mut keys: Vec<String> = Vec::new();
        if !extra.iter().any(|a| *a == "--keys" || *a == "--insecure") {
            let site = site_of(root);
            let hosts: Vec<&str> = ns.iter().map(|(_, ip)| ip.as_str()).collect();
            keys = vec![
                "--keys".into(),
                cell_keys_for(&site, &hosts).display().to_string(),
                "--site".into(),
                site,
            ];
        }
        let mut cmd = match &ns {
            Some((name, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(pager_bin());
                c
            }
            None => Command::new(pager_bin()),
        };
        let child = cmd
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["serve", "--root"])
            .arg(root)
            .args(&keys)
            .arg("--socket")
            .arg(socket)
            .args(["--resident-pages", &budget.to_string()])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("CLU_PAGER_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("start pager");
        let mut p = Pager {
            child,
            root: root.to_owned(),
            socket: socket.to_owned(),
            budget,
            env: env.to_vec(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ns,
        };
        let t0 = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(p);
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(format!("pager exited at start: {st}"));
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "pager did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The network namespace it runs in, if any.
    pub fn ns(&self) -> Option<&str> {
        self.ns.as_ref().map(|(n, _)| n.as_str())
    }

    /// Kills it and starts a new one on the same root and socket, with the same options.
    pub fn restart(&mut self) {
        self.kill();
        let env = std::mem::take(&mut self.env);
        let extra = std::mem::take(&mut self.extra);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let ns = self.ns.take();
        *self = Self::start_at(
            &self.root.clone(),
            &self.socket.clone(),
            self.budget,
            &extra,
            &env,
            ns,
        );
    }

    /// SIGKILLs it and starts it again as soon as it can start: a site of a cell is refused
    /// while its last run's lease is alive, so this retries for at most `within`.
    pub fn restart_when_lease_ends(&mut self, within: Duration) {
        self.kill();
        let t0 = Instant::now();
        let extra: Vec<String> = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        loop {
            match Self::try_start_at(
                &self.root.clone(),
                &self.socket.clone(),
                self.budget,
                &extra,
                &self.env.clone(),
                self.ns.clone(),
            ) {
                Ok(p) => {
                    *self = p;
                    return;
                }
                Err(e) => {
                    assert!(
                        t0.elapsed() < within,
                        "not restarted within {within:?}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
        }
    }

    /// Runs an administration command that must fail; returns what it printed on stderr.
    pub fn admin_fails(&self, args: &[&str]) -> String {
        let out = self.run_admin(args);
        assert!(!out.status.success(), "pager {args:?} succeeded: {out:?}");
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    /// Runs an administration command (`pager ARGS... --socket SOCKET`) that must succeed;
    /// returns its output, trimmed.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = self.run_admin(args);
        assert!(out.status.success(), "pager {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn run_admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(pager_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run pager")
    }

    /// `pager status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let text = self.admin(&["status", "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}"))
    }

    /// The output of `pager status`.
    pub fn status(&self) -> String {
        self.admin(&["status"])
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many descriptors it has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `clu-tool` process.
pub struct Tool {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Tool {
    /// Starts one talking to `pager`.
    pub fn start(pager: &Pager) -> Tool {
        Self::start_with(pager, &[])
    }

    /// Starts one talking to `pager` as user and group `uid` (with `setpriv`; the socket's
    /// directory must let that user through).
    pub fn start_as(pager: &Pager, uid: u32) -> Tool {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(tool_bin());
        Self::spawn(cmd, pager, &[])
    }

    /// Starts one talking to `pager`, with extra environment variables.
    pub fn start_with(pager: &Pager, env: &[(&str, &str)]) -> Tool {
        Self::spawn(Command::new(tool_bin()), pager, env)
    }

    /// Starts one talking to the pager whose socket is `socket`.
    pub fn start_at(socket: &Path) -> Tool {
        Self::spawn_at(Command::new(tool_bin()), socket, &[])
    }

    fn spawn(cmd: Command, pager: &Pager, env: &[(&str, &str)]) -> Tool {
        Self::spawn_at(cmd, &pager.socket, env)
    }

    fn spawn_at(mut cmd: Command, socket: &Path, env: &[(&str, &str)]) -> Tool {
        let mut child = cmd
            .env("CLU_PAGER_SOCKET", socket)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start clu-tool");
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tool {
            child,
            stdin,
            lines,
        }
    }

    /// Sends a command without waiting.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write to clu-tool");
        stdin.flush().expect("flush");
    }

    /// The next line, within `timeout`.
    pub fn line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Runs a command and returns its answer, `None` if the tool died (a SIGBUS, say) or
    /// did not answer within `timeout`.
    pub fn try_cmd(&mut self, cmd: &str, timeout: Duration) -> Option<String> {
        let stdin = self.stdin.as_mut()?;
        writeln!(stdin, "{cmd}").ok()?;
        stdin.flush().ok()?;
        self.line(timeout)
    }

    /// Runs a command and returns its answer (panics if the tool died or took over 60 s).
    pub fn cmd(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line(Duration::from_secs(60)).unwrap_or_else(|| {
            panic!(
                "no answer to `{cmd}`; tool status {:?}",
                self.child.try_wait()
            )
        })
    }

    /// Runs a command that must succeed; returns what follows `ok`.
    pub fn ok(&mut self, cmd: &str) -> String {
        let a = self.cmd(cmd);
        match a.strip_prefix("ok") {
            Some(rest) => rest.trim().to_string(),
            None => panic!("`{cmd}` failed: {a}"),
        }
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGKILL without reaping (to kill several processes at once).
    pub fn signal_kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The signal that ended a process, if any.
pub fn signal_of(st: ExitStatus) -> Option<i32> {
    st.signal()
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout`: a test must
/// fail, never hang, when a client hangs.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} did not finish within {timeout:?} (killed); stdout: {} stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The cluster id that begins a `create` answer (`ID NPAGES`).
pub fn id_of(created: &str) -> String {
    created
        .split_whitespace()
        .next()
        .expect("an id")
        .to_string()
}
