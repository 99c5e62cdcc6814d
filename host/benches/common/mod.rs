//! Pieces the benchmarks share: deterministic data, f32 files for the faiss scripts, and the
//! Python that runs faiss. Each benchmark uses a part of it.
#![allow(dead_code)]

use std::io::Write;
use std::process::Command;

pub const INSTALL_FAISS: &str = "python3 -m pip install faiss-cpu numpy";

/// Deterministic uniform values in [-0.5, 0.5).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Little-endian f32s, as the faiss scripts read them with numpy.
pub fn write_f32(out: &mut impl Write, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.write_all(&bytes).expect("write");
}

/// OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE may be set on this machine for other work; faiss runs
/// with OpenBLAS's own CPU detection instead.
pub fn python() -> Command {
    let mut command = Command::new("python3");
    command.env_remove("OPENBLAS_CORETYPE").env_remove("OPENBLAS_L2_SIZE");
    command
}

pub fn faiss_available() -> bool {
    python().args(["-c", "import faiss, numpy"]).output().is_ok_and(|out| out.status.success())
}

/// Run a faiss script and read the JSON it prints, or `None` with the reason printed.
pub fn run_json<T: serde::de::DeserializeOwned>(mut command: Command) -> Option<T> {
    let out = command.output().expect("run python3");
    if !out.status.success() {
        println!("faiss run failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    serde_json::from_slice(&out.stdout).map_err(|e| println!("faiss output unreadable: {e}")).ok()
}
