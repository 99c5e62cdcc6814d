//! A throwaway milvus-lite server for the Milvus store's tests (quarry-milvus's and the
//! end-to-end ones, which include this file).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway milvus-lite server on a free loopback port over a temporary data directory.
/// Killed when dropped, and by the kernel if the test's thread dies first.
pub struct MilvusLite {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl MilvusLite {
    pub fn start() -> MilvusLite {
        let binary = milvus_lite();
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path().join("milvus-lite.log")).unwrap();
        let child = dies_with_test(&mut Command::new(&binary))
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut server = MilvusLite { child, dir, port };
        let started = Instant::now();
        while TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("milvus-lite exited ({status}) before listening:\n{}", server.log());
            }
            assert!(started.elapsed() < Duration::from_secs(60), "milvus-lite did not listen within 60 s:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("milvus-lite.log")).unwrap_or_default()
    }
}

impl Drop for MilvusLite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `QUARRY_MILVUS_LITE`, else the one `scripts/setup.sh` installs under `vendor/milvus`.
fn milvus_lite() -> PathBuf {
    if let Some(path) = std::env::var_os("QUARRY_MILVUS_LITE") {
        return path.into();
    }
    // The workspace root: this file is shared by crates at different depths.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.ancestors().find(|dir| dir.join("scripts/setup.sh").is_file()).expect("the crate sits in the Quarry workspace");
    let installed = root.join("vendor/milvus/bin/milvus-lite");
    assert!(
        installed.is_file(),
        "milvus-lite is not installed: run `bash scripts/setup.sh` (it installs milvus-lite 3.2.2 into vendor/milvus), \
         or set QUARRY_MILVUS_LITE to a milvus-lite executable"
    );
    installed
}

/// Have the kernel kill the child when the thread that started it ends, so a failed test
/// leaves no server behind.
fn dies_with_test(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
