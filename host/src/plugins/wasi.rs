//! The WASI a plugin sees: nothing it could use to reach outside its call.
//!
//! - no files (no preopens), no environment, no arguments, no stdin;
//! - no network: TCP and UDP sockets cannot even be created (so no host file descriptors), and
//!   name lookups are refused;
//! - a wall clock frozen at the Unix epoch, and a monotonic clock with 1 ms resolution, too
//!   coarse to time the host's shared work (the batcher) as a side channel;
//! - sleeps (`subscribe-duration`, `subscribe-instant`) end at the call's deadline at the
//!   latest, and give the call's compute slot to others while they wait;
//! - stderr is captured (16 KiB), so a panic message reaches the caller.

use super::host_api::CallState;
use crate::capacity::{Deadline, Slot};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::p2::{DynPollable, Pollable};

/// Resolution of the monotonic clock plugins see.
pub const CLOCK_RESOLUTION: Duration = Duration::from_millis(1);

/// Resources (pollables, streams, generation sessions) one call may hold at once: each is host
/// memory, so a guest creating them in a loop must hit a wall long before the host does.
pub const MAX_RESOURCES: usize = 10_000;

/// The monotonic clock's origin, shared by every call (a call cannot learn when the host started).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// A monotonic clock rounded down to [`CLOCK_RESOLUTION`].
struct CoarseClock;

impl wasmtime_wasi::HostMonotonicClock for CoarseClock {
    fn resolution(&self) -> u64 {
        CLOCK_RESOLUTION.as_nanos() as u64
    }
    fn now(&self) -> u64 {
        let nanos = origin().elapsed().as_nanos() as u64;
        nanos - nanos % CLOCK_RESOLUTION.as_nanos() as u64
    }
}

/// A wall clock stuck at the Unix epoch: plugins get no wall time.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A call's WASI context; its stderr is written to `stderr`.
pub fn context(stderr: MemoryOutputPipe) -> wasmtime_wasi::WasiCtx {
    wasmtime_wasi::WasiCtxBuilder::new()
        .stderr(stderr)
        .wall_clock(FrozenClock)
        .monotonic_clock(CoarseClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Every WASI 0.2 interface a component may import (`wasi:<package>/<interface>@0.2.x`): the whole
/// 0.2 set, as componentize-py and ComponentizeJS guests import it, sockets and files included.
/// Each is linked and denied by [`context`]: no preopened directories, no environment, no
/// sockets, no name lookups, an empty stdin, a frozen wall clock and a coarse monotonic one.
/// Anything else (`wasi:http`, another vendor's interface) is refused at `plugin add`, by name.
pub const GRANTED: &[(&str, &[&str])] = &[
    ("wasi:io", &["error", "poll", "streams"]),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"]),
    ("wasi:random", &["random", "insecure", "insecure-seed"]),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
    ),
    ("wasi:filesystem", &["types", "preopens"]),
    (
        "wasi:sockets",
        &["network", "instance-network", "tcp", "tcp-create-socket", "udp", "udp-create-socket", "ip-name-lookup"],
    ),
];

/// Whether `import` (a component import name) is one of the [`GRANTED`] WASI 0.2 interfaces.
pub fn is_granted(import: &str) -> bool {
    let Some((path, version)) = import.split_once('@') else { return false };
    let Some((package, interface)) = path.split_once('/') else { return false };
    let mut parts = version.split('.');
    if (parts.next(), parts.next()) != (Some("0"), Some("2")) {
        return false;
    }
    GRANTED.iter().any(|(p, interfaces)| *p == package && interfaces.contains(&interface))
}

/// The WASI 0.2 interfaces a component may import, with sleeps capped by the call's deadline.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    // Replace the clock's sleeps (the only way a plugin can block in the host).
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| {
        let until = Instant::now().checked_add(Duration::from_nanos(nanos));
        Ok((sleep(store.data_mut(), until)?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
        let now = wasmtime_wasi::HostMonotonicClock::now(&CoarseClock);
        let until = Instant::now().checked_add(Duration::from_nanos(when.saturating_sub(now)));
        Ok((sleep(store.data_mut(), until)?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A pollable ready at `until` or at the call's deadline, whichever is first (`None`: never,
/// so the deadline).
fn sleep(state: &mut CallState, until: Option<Instant>) -> wasmtime::Result<Resource<DynPollable>> {
    let deadline = state.deadline();
    let until = match (until, deadline.instant()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let sleep = Sleep { until, deadline, slot: state.slot().cloned() };
    let table = state.table();
    let resource = table.push(sleep)?;
    wasmtime_wasi::p2::subscribe(table, resource)
}

struct Sleep {
    /// `None` only for a call without a deadline that asked to sleep forever.
    until: Option<Instant>,
    deadline: Deadline,
    slot: Option<Arc<Slot>>,
}

/// Takes the call's compute slot back when a sleep ends or is abandoned (another pollable of
/// the same `poll` won).
struct Reacquire<'a>(&'a Option<Arc<Slot>>, Deadline);

impl Drop for Reacquire<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            // At the deadline the reacquire fails; the epoch check then stops the call.
            let _ = slot.released(self.1, || ());
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        let Some(until) = self.until else {
            std::future::pending::<()>().await;
            return;
        };
        if until <= Instant::now() {
            // Let the runtime see other work, as wasmtime's own zero-length sleeps do.
            tokio::task::yield_now().await;
            return;
        }
        if let Some(slot) = &self.slot {
            slot.release();
        }
        let _back = Reacquire(&self.slot, self.deadline);
        tokio::time::sleep_until(until.into()).await;
    }
}
