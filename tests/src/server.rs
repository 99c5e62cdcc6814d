//! A `quarry serve` process for the HTTP tests and benchmarks, and a small client for it.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The admin key the servers started here use.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// A `quarry serve` child process; killed when dropped, so no test leaves one behind.
pub struct Server {
    child: Child,
    pub base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(data: &Path, config: Option<Value>) -> Server {
        let mut cmd = Command::new(quarry_binary());
        crate::dies_with_test(&mut cmd);
        cmd.arg("--data-dir").arg(data).args(["serve", "--listen", "127.0.0.1:0"]);
        if let Some(config) = config {
            let path = data.with_extension("server.json");
            std::fs::write(&path, config.to_string()).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.env("QUARRY_ADMIN_KEY", ADMIN_KEY).env_remove("QUARRY_LISTEN").stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("the CLI starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let started = Instant::now();
        let base = loop {
            let line = lines.next().and_then(Result::ok).unwrap_or_else(|| panic!("quarry serve exited before listening"));
            if let Some(addr) = line.strip_prefix("quarry serve: listening on ") {
                break addr.trim().to_string();
            }
            assert!(started.elapsed() < Duration::from_secs(120), "quarry serve did not start");
        };
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Server { child, base, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status (within 60 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "quarry serve did not stop after SIGTERM:\n{}", self.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

/// One request: (status, body as JSON or as a string, headers).
pub fn call(method: &str, url: &str, key: Option<&str>, body: Option<(&str, Vec<u8>)>) -> (u16, Value, ureq::http::HeaderMap) {
    let agent = agent();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    let response = match body {
        Some((content_type, bytes)) => agent.run(builder.header("content-type", content_type).body(bytes).unwrap()),
        None => agent.run(builder.body(()).unwrap()),
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, headers)
}


/// The `quarry` binary the tests run (tests/src/bin/quarry-e2e.rs), built by cargo beside them.
fn quarry_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let dir = exe.parent().expect("in a folder");
    // Test and bench binaries live in target/<profile>/deps; binaries one level up.
    let up = if dir.ends_with("deps") { dir.parent().unwrap() } else { dir };
    let path = up.join("quarry-e2e");
    assert!(path.is_file(), "{} is missing; `cargo build -p quarry-tests --bins` builds it", path.display());
    path
}
