//! A throwaway single-member etcd for the etcd control store's tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An `etcd` child process on loopback ports and a temporary data directory; killed when
/// dropped, so no test leaves one behind.
pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let mut server = EtcdServer { child: None, dir: tempfile::tempdir().unwrap(), client_port: free_port(), peer_port: free_port() };
        server.restart();
        server
    }

    /// Where clients connect: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kill the process (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same data directory and ports (stopping first if it runs), and wait
    /// until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let etcd = which("etcd").unwrap_or_else(|| panic!("etcd is not installed: run `bash scripts/setup.sh` (it installs etcd-server)"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let (client, peer) = (self.endpoint(), format!("http://127.0.0.1:{}", self.peer_port));
        let child = crate::dies_with_test(&mut Command::new(etcd))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "t", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer, "--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        self.wait_until_healthy();
    }

    fn wait_until_healthy(&mut self) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(2))).build().into();
        let started = Instant::now();
        loop {
            if let Ok(mut response) = agent.get(format!("{}/health", self.endpoint())).call()
                && response.status() == 200
                && response.body_mut().read_to_string().is_ok_and(|body| body.contains("true"))
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited ({status}) before answering:\n{}", self.log());
            }
            assert!(started.elapsed() < Duration::from_secs(20), "etcd did not answer within 20 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// What etcd wrote to stderr, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| path.is_file())
}
