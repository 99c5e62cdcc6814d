//! The strategy plugin runtime: one wasmtime engine, a content-addressed compile cache,
//! pre-linked components instantiated from a pooling allocator, and calls run under limits.
//!
//! Each call gets a fresh instance (about 10 µs from the pool), so a trap or a leak in one call
//! cannot affect the next, and no state crosses tenants. A call is admitted within its tenant's
//! share of the pool, computes in a fair share of the host's compute slots (yielding every epoch
//! tick to tenants holding fewer), and ends at its deadline whatever it is doing.

pub mod contract;
pub mod host_api;
pub mod limits;
pub mod registry;
pub mod schema;
pub mod wasi;

use crate::capacity::{Deadline, Expired, FairShare, Permit, Refused, Slot};
use crate::printable::printable;
use anyhow::{Context as _, Result, bail};
use contract::{Called, Instance, Pre};
pub use contract::StrategyError;
use host_api::{CallGrants, CallState, HostFault, HostServices};
use limits::Limits;
use registry::PluginDescriptor;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};


/// Bytes of each pooled linear memory kept resident (zeroed, not decommitted) between instances.
/// A Rust plugin's first megabyte is its stack, then its data and heap: at 512 KiB, a fresh
/// instance page-faulted its way through its stack and data on every call (about 150 µs of a
/// 5 ms search). The cost is memory: up to this much per pool slot once used.
const KEEP_RESIDENT: usize = 2 << 20;

/// How often the epoch advances. Running guest code checks its deadline and yields its compute
/// slot (when another tenant waits) once per tick.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Most bytes a plugin's `describe` may return in all (names, description, schema).
const MAX_DESCRIPTOR_BYTES: usize = 256 << 10;
/// Most models or fields a descriptor may declare.
const MAX_DECLARED: usize = 64;
/// Longest description kept, in characters.
const MAX_DESCRIPTION_CHARS: usize = 4096;

/// Why a plugin call failed. Every variant leaves the host running.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("strategy {strategy} ran past its {deadline_ms} ms deadline and was stopped; if it needs longer, raise `limits.deadline_ms` (`limits.build_deadline_ms` for builds)")]
    Timeout { strategy: String, deadline_ms: u64 },
    #[error("strategy {strategy} tried to grow its memory past the {limit_bytes}-byte cap and was stopped; send smaller batches, or raise `limits.memory_bytes` (or the tenant's `plugin_memory_bytes` quota)")]
    MemoryLimit { strategy: String, limit_bytes: usize },
    #[error("strategy {strategy} panicked: {message}")]
    Panicked { strategy: String, message: String },
    #[error("strategy {strategy} returned {count} {what}, over the limit of {limit}; ask for fewer or raise the limit")]
    ResultTooLarge { strategy: String, what: &'static str, count: usize, limit: usize },
    #[error("strategy {strategy} crashed ({trap}){detail}")]
    Trapped { strategy: String, trap: String, detail: String },
    #[error("strategy {strategy} failed: {error}")]
    Strategy { strategy: String, error: StrategyError },
    #[error("strategy {strategy} returned an invalid result: {message}")]
    InvalidResult { strategy: String, message: String },
    #[error("no capacity for the call: {0}")]
    Capacity(String),
    /// The tenant's compute budget ran out during the call (see [`crate::capacity::ComputeMeter`]).
    #[error("{0}")]
    OverBudget(String),
    /// The call's writes would take its tenant past its storage cap; nothing was written.
    #[error("{0}")]
    OverStorage(crate::store::OverStorage),
    #[error("the host failed inside `{import}` while serving strategy {strategy}: {message}; this is a bug in Quarry (please report it); the host keeps serving")]
    HostFault { strategy: String, import: &'static str, message: String },
    #[error("{0:#}")]
    Host(anyhow::Error),
}

impl From<Refused> for CallError {
    fn from(e: Refused) -> Self {
        CallError::Capacity(e.to_string())
    }
}

impl From<anyhow::Error> for CallError {
    fn from(e: anyhow::Error) -> Self {
        CallError::Host(e)
    }
}

/// A validated, compiled, pre-linked strategy.
pub struct LoadedPlugin {
    /// What `describe` returned when the plugin was added; never asked again.
    pub descriptor: PluginDescriptor,
    /// `name@version`.
    pub reference: String,
    /// The contract version the plugin was built against (from its export name).
    pub contract: String,
    /// SHA-256 of the component bytes.
    pub sha256: String,
    /// Length of the component bytes, which the plugin keeps in the control store.
    pub size: u64,
    /// The SDK that built the plugin, as it stamped itself into the component (if it did).
    pub sdk: Option<String>,
    pre: Pre,
    /// An instance made ahead of time by the reaper, so a call does not wait for instantiation.
    spare: std::sync::Mutex<Option<Spare>>,
    /// The descriptor's config schema, compiled on first use.
    schemas: std::sync::OnceLock<Result<Arc<schema::Schemas>, String>>,
}

impl LoadedPlugin {
    /// The plugin's config schema and query-parameter declaration, compiled (once). A schema
    /// recorded by an older host that this one cannot use is an error naming the plugin.
    pub fn schemas(&self) -> Result<Arc<schema::Schemas>> {
        self.schemas
            .get_or_init(|| schema::compile(&self.descriptor.config_schema).map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!("{}'s config schema cannot be used: {e}; add a fixed version of the plugin", self.reference))
    }
}

/// A ready instance waiting for its call; counts against the runtime's spare budget while alive.
struct Spare {
    store: Store<CallState>,
    instance: Instance,
    _budget: SpareBudget,
}

struct SpareBudget(Arc<AtomicUsize>);

impl Drop for SpareBudget {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A finished call's store, and the plugin to make a spare for.
struct Retired {
    store: Store<CallState>,
    refill: Option<Arc<LoadedPlugin>>,
}

/// A finished call whose instance grew past this much memory frees it on its own thread.
const FREE_INLINE_ABOVE: usize = 4 * KEEP_RESIDENT;

/// Finished calls' stores waiting for the reaper. The pool has room for them beside the calls
/// and the spares, so a call's admission ends with the call, not when the reaper gets to it.
const RETIRE_QUEUE: usize = 16;

/// What a successful call leaves for the host to keep: its writes (not yet committed), its
/// counters, and its deadline, which the commit must still meet.
#[derive(Debug, Default)]
pub struct CallOutput {
    pub writes: crate::store::WriteBatch,
    pub counters: HashMap<String, f64>,
    pub deadline: Deadline,
    /// The deadline's length, for messages.
    pub deadline_ms: u64,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("reference", &self.reference)
            .field("contract", &self.contract)
            .field("sdk", &self.sdk)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// The wasmtime engine, linker and compile cache shared by every plugin.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: PathBuf,
    limits: Limits,
    /// Concurrent calls, within the pool's room for calls, capped per tenant.
    calls: Arc<FairShare>,
    /// Compute slots, shared with model runs.
    compute: Arc<FairShare>,
    compilations: AtomicU64,
    cache_hits: AtomicU64,
    reaper: Option<std::sync::mpsc::SyncSender<Retired>>,
    reaper_thread: Option<std::thread::JoinHandle<()>>,
    /// A tenant's own cap on plugin memory, below `limits.memory_bytes` (a quota).
    memory_caps: std::sync::OnceLock<Box<MemoryCaps>>,
}

/// Given a tenant, the bytes of linear memory its plugin instances may grow to, if it has a cap
/// of its own.
pub type MemoryCaps = dyn Fn(&str) -> Option<usize> + Send + Sync;

impl Drop for PluginRuntime {
    /// Finish retiring calls before the host goes, so nothing outlives it (the store's file lock
    /// included).
    fn drop(&mut self) {
        drop(self.reaper.take());
        if let Some(thread) = self.reaper_thread.take() {
            let _ = thread.join();
        }
    }
}

impl PluginRuntime {
    /// A runtime whose calls compute in `compute`'s slots (shared with the model runtime).
    pub fn new(cache_dir: PathBuf, limits: Limits, compute: Arc<FairShare>) -> Result<Self> {
        limits.validate()?;
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Component-model async is not used; leaving it on doubles call and instantiation cost.
        config.concurrency_support(false);
        // Spares hold pool slots beside the calls; so do stores waiting for the reaper.
        let max_spares = (limits.max_instances as usize / 4).max(1);
        let slots = limits.max_instances + (max_spares + RETIRE_QUEUE) as u32;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .max_memory_size(limits.memory_bytes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(anyhow::Error::from).context("cannot start the WebAssembly engine")?;

        let mut linker = Linker::new(&engine);
        wasi::add_to_linker(&mut linker)?;
        contract::add_to_linker(&mut linker)?;

        // A claim waiting for a compute slot makes running guests look at once (their epoch
        // callback yields to it), rather than at their next tick.
        let weak = engine.weak();
        compute.on_contention(move || {
            if let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
            }
        });
        compute.keep_for_returning_tenants(EPOCH_TICK);
        let (weak, ticked) = (engine.weak(), compute.clone());
        std::thread::Builder::new().name("quarry-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                ticked.tick();
                std::thread::sleep(EPOCH_TICK);
            }
        })?;

        // The reaper takes the slow parts of a call off the caller's path: resetting a finished
        // instance's memory (~100 µs) and instantiating the next one (~20-70 µs).
        let (reaper, finished) = std::sync::mpsc::sync_channel::<Retired>(RETIRE_QUEUE);
        let (reaper_engine, reaper_limits) = (engine.clone(), limits.clone());
        let spares = Arc::new(AtomicUsize::new(0));
        let calls = FairShare::new("concurrent calls", limits.max_instances as usize, Some(limits.calls_per_tenant()));
        let reaper_thread = std::thread::Builder::new().name("quarry-reaper".into()).spawn(move || {
            run_in_the_background();
            for Retired { store, refill } in finished {
                let services = store.data().services().clone();
                drop(store);
                let Some(plugin) = refill else { continue };
                let mut slot = plugin.spare.lock().unwrap();
                if slot.is_some() || spares.fetch_add(1, Ordering::Relaxed) >= max_spares {
                    if slot.is_none() {
                        spares.fetch_sub(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let budget = SpareBudget(spares.clone());
                let mut store = fresh_store(&reaper_engine, &reaper_limits, &plugin.reference, &services, Arc::new(CallGrants::default()));
                if let Ok(instance) = plugin.pre.instantiate(&mut store) {
                    *slot = Some(Spare { store, instance, _budget: budget });
                }
            }
        })?;

        std::fs::create_dir_all(&cache_dir).with_context(|| format!("cannot create compile cache {}", cache_dir.display()))?;
        Ok(PluginRuntime {
            engine,
            linker,
            cache_dir,
            limits,
            calls,
            compute,
            compilations: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            reaper: Some(reaper),
            reaper_thread: Some(reaper_thread),
            memory_caps: std::sync::OnceLock::new(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many components this runtime compiled, and how many it took from the cache.
    pub fn compile_stats(&self) -> (u64, u64) {
        (self.compilations.load(Ordering::Relaxed), self.cache_hits.load(Ordering::Relaxed))
    }

    /// Validate, compile (or fetch from cache) and pre-link a component new to the host, and run
    /// its `describe` once, under the call limits, billed to `tenant`. The descriptor becomes part
    /// of the plugin's identity: it is stored and never asked for again.
    pub fn load_new(&self, bytes: &[u8], services: &Arc<HostServices>, tenant: &str) -> Result<LoadedPlugin> {
        let mut plugin = self.prepare(bytes)?;
        let grants = Arc::new(CallGrants { tenant: tenant.to_string(), ..Default::default() });
        let (raw, _) = self
            .run(&plugin, None, services, grants, self.limits.deadline_ms, |store, p| p.describe(store).map(Ok))
            .map_err(|e| anyhow::anyhow!("the plugin's `describe` failed: {e}"))?;
        let descriptor = check_descriptor(raw)?;
        plugin.reference = descriptor.reference();
        plugin.descriptor = descriptor;
        Ok(plugin)
    }

    /// Compile (or fetch from cache) and pre-link a stored plugin with the descriptor recorded
    /// when it was added. Runs no plugin code.
    pub fn load_stored(&self, bytes: &[u8], descriptor: PluginDescriptor) -> Result<LoadedPlugin> {
        let mut plugin = self.prepare(bytes)?;
        plugin.reference = descriptor.reference();
        plugin.descriptor = descriptor;
        Ok(plugin)
    }

    fn prepare(&self, bytes: &[u8]) -> Result<LoadedPlugin> {
        check_wasm_kind(bytes)?;
        let sha256 = content_hash(bytes);
        let component = self.compile_cached(bytes, &sha256)?;
        let version = self.check_contract(&component)?;
        let pre = Pre::new(&self.linker, &component, version).with_context(|| {
            format!("the plugin needs imports this host does not provide; build it with quarry-sdk against {}", contract::supported())
        })?;
        let contract = format!("{}@{version}", contract::PACKAGE);
        Ok(LoadedPlugin {
            descriptor: PluginDescriptor::default(),
            reference: "(loading)".into(),
            contract,
            sha256,
            size: bytes.len() as u64,
            sdk: sdk_stamp(bytes),
            pre,
            spare: Default::default(),
            schemas: Default::default(),
        })
    }

    fn compile_cached(&self, bytes: &[u8], sha256: &str) -> Result<Component> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = self.cache_dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()));
        if path.is_file() {
            // SAFETY: the file was written by `Component::serialize` of this same engine
            // configuration (its name carries the engine's compatibility hash), in the host's
            // own data directory, which plugins cannot reach.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(component);
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| anyhow::anyhow!("{e:?}")).context("cannot compile the component")?;
        self.compilations.fetch_add(1, Ordering::Relaxed);
        crate::control::write_atomically(&path, &component.serialize()?)?;
        Ok(component)
    }

    /// Find the exported strategy interface and its contract version, and check the component
    /// imports nothing of the contract from another version.
    fn check_contract(&self, component: &Component) -> Result<&'static str> {
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let version = contract::exported_version(&exports)?;
        for (name, _) in ty.imports(&self.engine) {
            if name.starts_with("wasi:") {
                if !wasi::is_granted(name) {
                    bail!(
                        "the plugin imports `{}`, which this host does not provide: plugins may import the contract and the \
                         WASI 0.2 interfaces of wasi:io, wasi:clocks, wasi:random, wasi:cli, wasi:filesystem and wasi:sockets \
                         (each denied: no files, network or environment); a ComponentizeJS build drops the rest with \
                         `-d http -d fetch-event -d stdio -d random -d clocks`",
                        printable(name, 100)
                    );
                }
                continue;
            }
            if !name.starts_with(&format!("{}/", contract::PACKAGE)) {
                bail!("the plugin imports `{}`, which this host does not provide; plugins may import only the contract ({}) and WASI 0.2", printable(name, 100), contract::supported());
            }
            if let Some(v) = name.strip_prefix(contract::PACKAGE).and_then(|rest| rest.split('@').nth(1))
                && contract::line_of(v) != Some(version)
            {
                bail!("the plugin exports its strategy for {}@{version} but imports `{}`; build it against one version", contract::PACKAGE, printable(name, 100));
            }
        }
        Ok(version)
    }

    fn new_store(&self, plugin: &LoadedPlugin, services: &Arc<HostServices>, grants: Arc<CallGrants>) -> Store<CallState> {
        fresh_store(&self.engine, &self.limits, &plugin.reference, services, grants)
    }

    /// Run `f` on a fresh instance of `plugin` under this runtime's limits, with a deadline of
    /// `deadline_ms`. On success, returns the result and what the call leaves to keep.
    /// Cap tenants' plugin memory below `limits.memory_bytes` (set once; quotas do).
    pub fn set_memory_caps(&self, caps: Box<MemoryCaps>) {
        let _ = self.memory_caps.set(caps);
    }

    pub fn call<R>(
        &self,
        plugin: &Arc<LoadedPlugin>,
        services: &Arc<HostServices>,
        grants: Arc<CallGrants>,
        deadline_ms: u64,
        f: impl FnOnce(&mut Store<CallState>, &Instance) -> Called<R>,
    ) -> Result<(R, CallOutput), CallError> {
        self.run(plugin, Some(plugin), services, grants, deadline_ms, f)
    }

    fn run<R>(
        &self,
        plugin: &LoadedPlugin,
        refill: Option<&Arc<LoadedPlugin>>,
        services: &Arc<HostServices>,
        grants: Arc<CallGrants>,
        deadline_ms: u64,
        f: impl FnOnce(&mut Store<CallState>, &Instance) -> Called<R>,
    ) -> Result<(R, CallOutput), CallError> {
        let deadline = Deadline::after(Duration::from_millis(deadline_ms));
        let tenant: Arc<str> = Arc::from(grants.tenant.as_str());
        let admission = self.calls.acquire(&tenant, deadline).map_err(|e| self.refused(e, plugin, deadline_ms))?;
        let compute = self.compute.acquire(&tenant, deadline).map_err(|e| self.refused(e, plugin, deadline_ms))?;
        let slot = Slot::new(compute);
        let spare = plugin.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let (mut store, instance) = match spare {
            Some(Spare { store, instance, .. }) => (store, Ok(instance)),
            None => {
                let mut store = self.new_store(plugin, services, grants.clone());
                let instance = plugin.pre.instantiate(&mut store);
                (store, instance)
            }
        };
        let memory_bytes = self.memory_caps.get().and_then(|caps| caps(&grants.tenant)).map_or(self.limits.memory_bytes, |cap| cap.min(self.limits.memory_bytes));
        store.data_mut().limiter.memory_bytes = memory_bytes;
        store.data_mut().begin_call(grants, deadline, Some(slot.clone()));
        arm(&mut store);
        let outcome = match instance {
            Ok(instance) => Ok(f(&mut store, &instance)),
            Err(e) => Err(CallError::Host(anyhow::anyhow!("cannot start an instance of {}: {e:#}", plugin.reference))),
        };
        let result = outcome.and_then(|outcome| self.finish(outcome, &mut store, &plugin.reference, deadline_ms));
        // A store that grew its memory large is freed here, and so is any when the reaper is
        // behind (so retired instances never pile up). Freeing a large instance's memory takes
        // milliseconds: here it counts against this call's compute slot, at normal priority,
        // so a tenant can neither spend other tenants' cores on it nor leave it to the idle-
        // priority reaper, which may hold the process's memory-map lock while it waits for CPU.
        if store.data().limiter.peak_bytes > FREE_INLINE_ABOVE {
            drop(store);
        } else if let Some(Err(std::sync::mpsc::TrySendError::Full(r) | std::sync::mpsc::TrySendError::Disconnected(r))) =
            self.reaper.as_ref().map(|reaper| reaper.try_send(Retired { store, refill: refill.cloned() }))
        {
            drop(r);
        }
        slot.release();
        drop(admission);
        result
    }

    /// A call that could not start: its tenant is at its limit, or the deadline passed while it
    /// waited for room (that is a timeout like any other).
    fn refused(&self, e: Refused, plugin: &LoadedPlugin, deadline_ms: u64) -> CallError {
        match e {
            Refused::Expired(_) => CallError::Timeout { strategy: plugin.reference.clone(), deadline_ms },
            e => e.into(),
        }
    }

    fn finish<R>(
        &self,
        outcome: Called<R>,
        store: &mut Store<CallState>,
        strategy: &str,
        deadline_ms: u64,
    ) -> Result<(R, CallOutput), CallError> {
        match outcome {
            Ok(Ok(value)) => {
                let state = store.data_mut();
                let output = CallOutput { writes: std::mem::take(&mut state.writes), counters: std::mem::take(&mut state.counters), deadline: state.deadline(), deadline_ms };
                Ok((value, output))
            }
            Ok(Err(error)) => Err(CallError::Strategy { strategy: strategy.to_string(), error }),
            Err(e) => Err(self.classify(e, store.data(), strategy, deadline_ms)),
        }
    }

    /// Instantiate `plugin` for many calls in a row (read-only: writes are discarded). A trap
    /// poisons the instance; take a new one after an error.
    pub fn instantiate<'a>(&'a self, plugin: &Arc<LoadedPlugin>, services: &Arc<HostServices>, grants: Arc<CallGrants>) -> Result<LiveInstance<'a>, CallError> {
        let tenant: Arc<str> = Arc::from(grants.tenant.as_str());
        let admission = self.calls.acquire(&tenant, Deadline::NONE)?;
        let mut store = self.new_store(plugin, services, grants);
        match plugin.pre.instantiate(&mut store) {
            Ok(instance) => Ok(LiveInstance { runtime: self, plugin: plugin.clone(), store, instance, tenant, _admission: admission }),
            Err(e) => Err(CallError::Host(anyhow::anyhow!("cannot start an instance of {}: {e:#}", plugin.reference))),
        }
    }

    fn classify(&self, error: wasmtime::Error, state: &CallState, strategy: &str, deadline_ms: u64) -> CallError {
        let strategy = strategy.to_string();
        if state.limiter.memory_cap_hit {
            return CallError::MemoryLimit { strategy, limit_bytes: state.limiter.memory_bytes };
        }
        if error.downcast_ref::<Expired>().is_some() {
            return CallError::Timeout { strategy, deadline_ms };
        }
        if let Some(spent) = error.downcast_ref::<crate::capacity::OverBudget>() {
            return CallError::OverBudget(spent.0.clone());
        }
        if let Some(fault) = error.downcast_ref::<HostFault>() {
            return CallError::HostFault { strategy, import: fault.import, message: printable(&fault.message, 2000) };
        }
        let stderr = printable(String::from_utf8_lossy(&state.stderr.contents()).trim(), 4000);
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout { strategy, deadline_ms },
            Some(Trap::UnreachableCodeReached) if stderr.contains("panicked") => {
                let message = stderr.lines().skip_while(|l| !l.contains("panicked")).nth(1).unwrap_or(&stderr).to_string();
                CallError::Panicked { strategy, message }
            }
            Some(trap) => {
                let detail = if stderr.is_empty() { String::new() } else { format!(": {stderr}") };
                let trap = match trap {
                    Trap::MemoryOutOfBounds | Trap::StackOverflow => format!("{trap}; deep recursion overflows a plugin's stack"),
                    other => other.to_string(),
                };
                CallError::Trapped { strategy, trap, detail }
            }
            None => CallError::Trapped { strategy, trap: format!("{:#}", error.root_cause()), detail: String::new() },
        }
    }
}

/// An instance kept for repeated calls; see [`PluginRuntime::instantiate`].
pub struct LiveInstance<'a> {
    runtime: &'a PluginRuntime,
    plugin: Arc<LoadedPlugin>,
    store: Store<CallState>,
    instance: Instance,
    tenant: Arc<str>,
    _admission: Permit,
}

impl LiveInstance<'_> {
    pub fn search(&mut self, ctx: &contract::CallContext, query: &contract::Query) -> Result<Vec<contract::PluginHit>, CallError> {
        let runtime = self.runtime;
        let deadline_ms = runtime.limits.deadline_ms;
        let deadline = Deadline::after(Duration::from_millis(deadline_ms));
        let compute = runtime.compute.acquire(&self.tenant, deadline).map_err(|e| runtime.refused(e, &self.plugin, deadline_ms))?;
        let slot = Slot::new(compute);
        let grants = self.store.data().grants().clone();
        self.store.data_mut().begin_call(grants, deadline, Some(slot.clone()));
        arm(&mut self.store);
        let outcome = self.instance.search(&mut self.store, ctx, query);
        slot.release();
        let result = runtime.finish(outcome, &mut self.store, &self.plugin.reference, deadline_ms).map(|(hits, _)| hits);
        self.store.data_mut().writes = Default::default();
        result
    }
}

fn fresh_store(engine: &Engine, limits: &Limits, strategy: &str, services: &Arc<HostServices>, grants: Arc<CallGrants>) -> Store<CallState> {
    let mut store = Store::new(engine, CallState::new(services.clone(), grants, limits, strategy));
    store.limiter(|s| &mut s.limiter);
    // Every tick: stop at the deadline, and let a tenant holding fewer compute slots go first.
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        let deadline = state.deadline();
        if deadline.expired() {
            return Err(Trap::Interrupt.into());
        }
        if let Some(slot) = state.slot() {
            slot.yield_if_contended(deadline).map_err(wasmtime::Error::new)?;
        }
        Ok(UpdateDeadline::Continue(1))
    });
    arm(&mut store);
    store
}

/// A store's epoch deadline must be set before it runs code; the callback re-arms it each tick.
fn arm(store: &mut Store<CallState>) {
    store.set_epoch_deadline(1);
}

/// Let this thread run only on an otherwise idle core. The reaper's work (a few hundred
/// microseconds a call) is never urgent; at normal priority, waking it handed it the caller's
/// core on a busy machine, and the caller waited for it (about 150 µs of a 5 ms search).
fn run_in_the_background() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}


/// Tell a core module, a component and a non-wasm file apart before compiling.
fn check_wasm_kind(bytes: &[u8]) -> Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no `\\0asm` header); pass the `.wasm` that `cargo build --target wasm32-wasip2` produced");
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => bail!(
            "this is a core WebAssembly module, not a component; build the plugin with \
             `cargo build --target wasm32-wasip2` (which produces a component), not wasm32-unknown-unknown or wasm32-wasip1"
        ),
        [_, _, 1, 0] => Ok(()),
        _ => bail!("unsupported WebAssembly binary version {:?}; rebuild with a current toolchain", &bytes[4..8]),
    }
}

/// The `quarry-sdk` custom section the SDK writes into every plugin's core module.
fn sdk_stamp(bytes: &[u8]) -> Option<String> {
    wasmparser::Parser::new(0).parse_all(bytes).find_map(|payload| match payload {
        Ok(wasmparser::Payload::CustomSection(section)) if section.name() == "quarry-sdk" => {
            String::from_utf8(section.data().to_vec()).ok()
        }
        _ => None,
    })
}

/// Check what `describe` returned and keep it as the plugin's descriptor: names the host uses
/// as keys, strict semver, bounded sizes, and a config schema that is a JSON Schema object.
fn check_descriptor(d: contract::RawDescriptor) -> Result<PluginDescriptor> {
    let size = d.name.len()
        + d.version.len()
        + d.description.len()
        + d.config_schema.len()
        + d.models.iter().map(String::len).sum::<usize>()
        + d.fields.iter().map(|(name, _)| name.len()).sum::<usize>();
    if size > MAX_DESCRIPTOR_BYTES {
        bail!("the plugin's `describe` returned {size} bytes, over the limit of {MAX_DESCRIPTOR_BYTES}; keep the description and schema small");
    }
    crate::store::validate_name("strategy", &d.name).context("the plugin's `describe` returned a bad name")?;
    let version = semver::Version::parse(&d.version).map_err(|e| {
        anyhow::anyhow!("the plugin's `describe` returned version `{}`, which is not semver (MAJOR.MINOR.PATCH): {e}", printable(&d.version, 64))
    })?;
    if d.models.len() > MAX_DECLARED || d.fields.len() > MAX_DECLARED {
        bail!("the plugin's `describe` declares {} models and {} fields; at most {MAX_DECLARED} of each", d.models.len(), d.fields.len());
    }
    for model in &d.models {
        crate::store::validate_name("model role", model).context("the plugin's `describe` declares a bad model role")?;
    }
    let mut names = std::collections::HashSet::new();
    for (name, _) in &d.fields {
        crate::store::validate_name("field", name).context("the plugin's `describe` declares a bad field")?;
        if !names.insert(name.as_str()) {
            bail!("the plugin's `describe` declares field `{name}` twice");
        }
    }
    let schema: serde_json::Value = serde_json::from_str(&d.config_schema).context("the plugin's `describe` returned a config schema that is not JSON")?;
    schema::compile(&schema).context("the plugin's `describe` returned a config schema the host cannot use")?;
    Ok(PluginDescriptor {
        name: d.name,
        version: version.to_string(),
        description: d.description.chars().take(MAX_DESCRIPTION_CHARS).collect(),
        models: d.models,
        fields: d.fields,
        config_schema: schema,
        reranks: d.reranks,
    })
}

/// A component's identity on disk and in the compile cache: the SHA-256 of its bytes, in hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_kinds_are_told_apart() {
        let core = format!("{:#}", check_wasm_kind(b"\0asm\x01\0\0\0").unwrap_err());
        assert!(core.contains("core WebAssembly module") && core.contains("wasm32-wasip2"), "{core}");
        let junk = format!("{:#}", check_wasm_kind(b"PK\x03\x04zipfile").unwrap_err());
        assert!(junk.contains("not a WebAssembly file"), "{junk}");
        assert!(check_wasm_kind(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn contract_versions_are_told_apart() {
        let export = |v: &str| vec![format!("quarry:retrieval/strategy@{v}")];
        assert_eq!(contract::exported_version(&export("0.1.0")).unwrap(), "0.1.0");
        assert_eq!(contract::exported_version(&export("0.1.7")).unwrap(), "0.1.0");
        assert_eq!(contract::exported_version(&export("0.2.3")).unwrap(), "0.2.0");
        let err = contract::exported_version(&export("2.0.0")).unwrap_err().to_string();
        assert!(err.contains("quarry:retrieval@2.0.0") && err.contains("@0.1.x and quarry:retrieval@0.2.x"), "{err}");
        assert!(contract::exported_version(&["wasi:cli/run@0.2.0".into()]).unwrap_err().to_string().contains("export_strategy!"));
        assert!(contract::line_of("0.2").is_none() && contract::line_of("0.1.0/../x").is_none());
    }

    #[test]
    fn only_wasi_0_2_interfaces_are_granted() {
        for ok in ["wasi:io/poll@0.2.0", "wasi:sockets/tcp@0.2.9", "wasi:filesystem/preopens@0.2.12", "wasi:cli/terminal-stdout@0.2.3"] {
            assert!(wasi::is_granted(ok), "{ok}");
        }
        for refused in [
            "wasi:http/types@0.2.10",
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:io/poll@0.3.0",
            "wasi:clocks/timezone@0.2.9",
            "wasi:io/poll",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:cli/run@0.2.0",
        ] {
            assert!(!wasi::is_granted(refused), "{refused}");
        }
    }
}
