//! Sharing one host between tenants: call deadlines, and fair shares of bounded capacity
//! (concurrent plugin calls, compute slots).
//!
//! A [`FairShare`] hands out at most `capacity` permits. When it is full, a released permit goes
//! straight to the claim whose tenant holds the fewest permits (among equals, the tenant served
//! longest ago; within a tenant, its oldest claim), and only that claim's thread is woken. So a
//! tenant that floods the host waits behind tenants that do not. A holder can
//! [yield](Permit::yield_if_contended) to a tenant holding fewer and queue again: running guest
//! code does so at every epoch tick, and a new claim on a full compute share makes the guests
//! look at once, which is how one tenant's loops leave room for another tenant's searches.
//!
//! Two rules keep the kernel's scheduler from undoing this on a machine with few cores: a
//! tenant's last permit is kept for it for a tick when every waiting tenant already holds one
//! (a tenant calling in sequence comes straight back), and a thread handed a permit by a
//! releasing thread never preempts it ([`QuietWake`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// When a piece of work must be done by; [`Deadline::NONE`] for host work without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    pub const NONE: Deadline = Deadline(None);

    /// `duration` from now (none if that is past what an `Instant` can hold).
    pub fn after(duration: Duration) -> Self {
        Deadline(Instant::now().checked_add(duration))
    }

    pub fn at(instant: Instant) -> Self {
        Deadline(Some(instant))
    }

    pub fn instant(&self) -> Option<Instant> {
        self.0
    }

    /// Time left: `None` when unbounded, zero once passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.0.map(|at| at.saturating_duration_since(Instant::now()))
    }

    pub fn expired(&self) -> bool {
        self.0.is_some_and(|at| Instant::now() >= at)
    }

    /// An error naming `work` if the deadline has passed.
    pub fn check(&self, work: &str) -> Result<(), Expired> {
        if self.expired() { Err(Expired(work.to_string())) } else { Ok(()) }
    }

    /// The later of two deadlines (unbounded wins): how long shared work may run for all its callers.
    pub fn latest(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Deadline(Some(a.max(b))),
            _ => Deadline::NONE,
        }
    }
}

/// A call's deadline passed while the host was working for it (or waiting to).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the call's deadline passed during {0}")]
pub struct Expired(pub String);

/// Why a permit was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Expired(#[from] Expired),
    #[error("tenant `{tenant}` is at its {limit} {what}; wait for some to finish or raise `limits.max_calls_per_tenant`")]
    TenantAtLimit { tenant: String, limit: usize, what: &'static str },
}

/// A bounded capacity shared fairly between tenants.
pub struct FairShare {
    /// What a permit is, for messages ("concurrent calls", "compute slots").
    what: &'static str,
    capacity: usize,
    /// Most permits one tenant may hold; asking for more waits for one of its own to end.
    per_tenant: Option<usize>,
    state: Mutex<State>,
    /// Called when a claim starts waiting on a full share, so holders that can yield (running
    /// guest code) look at once instead of at their next tick.
    on_contention: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// How long a tenant's last permit is kept for it (see [`FairShare::keep_for_returning_tenants`]).
    keep: OnceLock<Duration>,
    /// Time permits were held, per tenant (compute slots are metered; see [`ComputeMeter`]).
    meter: Option<Arc<ComputeMeter>>,
}

/// Compute time used per tenant: the time its calls held a compute slot (guest code and host
/// work done on the call's thread) plus its share of batched model runs, apportioned by rows.
/// Cumulative since the host started; a quota reads the growth between two looks.
#[derive(Default)]
pub struct ComputeMeter {
    used: Mutex<HashMap<Arc<str>, Duration>>,
    /// Says whether a tenant may compute more (a quota on what the meter reads); asked before
    /// each model run, so work queued before a budget ran out does not run after it.
    gate: OnceLock<Box<ComputeGate>>,
}

/// Given a tenant and its compute used so far, why it may not compute more (or `None`).
pub type ComputeGate = dyn Fn(&str, Duration) -> Option<String> + Send + Sync;

/// A tenant's compute budget is spent; the message says which quota and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OverBudget(pub String);

impl ComputeMeter {
    /// Set the gate (once; later calls are ignored).
    pub fn set_gate(&self, gate: Box<ComputeGate>) {
        let _ = self.gate.set(gate);
    }

    /// Refuse more compute for `tenant` if its gate says so.
    pub fn admit(&self, tenant: &str) -> Result<(), OverBudget> {
        match self.gate.get() {
            Some(gate) => gate(tenant, self.used(tenant)).map_or(Ok(()), |why| Err(OverBudget(why))),
            None => Ok(()),
        }
    }

    pub fn charge(&self, tenant: &Arc<str>, time: Duration) {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner).entry(tenant.clone()).or_default() += time;
    }

    /// Split `time` between tenants in proportion to their `(tenant, rows)` shares.
    pub fn apportion<'a>(&self, time: Duration, shares: impl IntoIterator<Item = (&'a Arc<str>, usize)>) {
        let shares: Vec<(&Arc<str>, usize)> = shares.into_iter().collect();
        let total: usize = shares.iter().map(|(_, rows)| rows).sum();
        if total == 0 {
            return;
        }
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        for (tenant, rows) in shares {
            *used.entry(tenant.clone()).or_default() += time.mul_f64(rows as f64 / total as f64);
        }
    }

    /// Compute time `tenant` used so far.
    pub fn used(&self, tenant: &str) -> Duration {
        self.used.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).copied().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    total: usize,
    held: HashMap<Arc<str>, usize>,
    /// Waiting claims by ticket (oldest first).
    waiting: BTreeMap<u64, Waiter>,
    next_ticket: u64,
    /// When each tenant with permits or claims was last granted one (a count of grants), so
    /// that among tenants holding as many, the one served longest ago goes next: round robin
    /// between tenants, not between their claims.
    last_grant: HashMap<Arc<str>, u64>,
    grants: u64,
    /// A permit kept free until the instant for the tenant that gave back its last one (see
    /// [`FairShare::keep_for_returning_tenants`]).
    kept: Option<(Arc<str>, Instant)>,
}

/// What a claim is for, which orders one tenant's claims: work nearest its end goes first.
/// A call resuming after a model run usually finishes within microseconds; a call starting
/// runs its guest code to its first host wait; a batched model run goes last, so the calls
/// about to queue inputs for it join it instead of each waiting a whole run. In `--bench
/// serve_http` this took a quiet tenant's p99 beside a flood from 1.6x its p99 alone to about
/// 1.3x. The order between tenants is fair share's alone, so no claim moves ahead of another
/// tenant's; and a run waits only on its own tenant's calls in flight (at most its concurrent
/// calls quota), each until its next host wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    Resume,
    Start,
    Run,
}

struct Waiter {
    tenant: Arc<str>,
    claim: Claim,
    thread: std::thread::Thread,
    /// Set when a releaser hands the claim a permit (already counted as the claim's).
    granted: bool,
    /// How to keep the woken thread from taking its waker's CPU.
    quiet: QuietWake,
}

impl State {
    fn held(&self, tenant: &str) -> usize {
        self.held.get(tenant).copied().unwrap_or(0)
    }

    fn last_grant(&self, tenant: &str) -> u64 {
        self.last_grant.get(tenant).copied().unwrap_or(0)
    }

    /// Whether the only free permit is kept for a tenant other than `tenant`.
    fn kept_from(&self, tenant: &Arc<str>, capacity: usize) -> bool {
        self.kept.as_ref().is_some_and(|(keeper, _)| keeper != tenant && capacity - self.total <= 1)
    }

    fn take(&mut self, tenant: &Arc<str>) {
        if self.kept.as_ref().is_some_and(|(keeper, _)| keeper == tenant) {
            self.kept = None;
        }
        self.total += 1;
        *self.held.entry(tenant.clone()).or_default() += 1;
        self.grants += 1;
        self.last_grant.insert(tenant.clone(), self.grants);
    }

    fn give_back(&mut self, tenant: &str) {
        self.total -= 1;
        if let Some(n) = self.held.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(tenant);
                if !self.waiting.values().any(|w| &*w.tenant == tenant) {
                    self.last_grant.remove(tenant);
                }
            }
        }
    }

    /// Hand free permits to waiters: each to the claim whose tenant holds the fewest permits
    /// (under `limit`); among equals, the tenant served longest ago; within a tenant, its oldest
    /// claim. Only that claim's thread is woken.
    ///
    /// `releasing`: the waker goes on running (it released a permit rather than yielding one
    /// and waiting), so the woken threads must not take its CPU (see [`QuietWake`]).
    fn hand_over(&mut self, capacity: usize, limit: Option<usize>, releasing: bool) {
        while self.total < capacity {
            let next = self
                .waiting
                .iter()
                .filter(|(_, w)| !w.granted && limit.is_none_or(|limit| self.held(&w.tenant) < limit) && !self.kept_from(&w.tenant, capacity))
                .min_by_key(|(ticket, w)| (self.held(&w.tenant), self.last_grant(&w.tenant), w.claim, **ticket))
                .map(|(ticket, _)| *ticket);
            let Some(ticket) = next else { return };
            let tenant = self.waiting[&ticket].tenant.clone();
            self.take(&tenant);
            let waiter = self.waiting.get_mut(&ticket).expect("the ticket was just found");
            waiter.granted = true;
            if releasing {
                waiter.quiet.before_wake();
            }
            waiter.thread.unpark();
        }
    }
}

impl FairShare {
    pub fn new(what: &'static str, capacity: usize, per_tenant: Option<usize>) -> Arc<Self> {
        Arc::new(FairShare { what, capacity: capacity.max(1), per_tenant, state: Mutex::default(), on_contention: OnceLock::new(), keep: OnceLock::new(), meter: None })
    }

    /// `slots` compute slots, shared fairly, with no per-tenant cap; the time each tenant holds
    /// them is metered.
    pub fn compute(slots: usize) -> Arc<Self> {
        Arc::new(FairShare {
            what: "compute slots",
            capacity: slots.max(1),
            per_tenant: None,
            state: Mutex::default(),
            on_contention: OnceLock::new(),
            keep: OnceLock::new(),
            meter: Some(Arc::default()),
        })
    }

    /// The meter of the time tenants held permits, for metered shares.
    pub fn meter(&self) -> Option<&Arc<ComputeMeter>> {
        self.meter.as_ref()
    }

    /// Set what to call when a claim waits on a full share (once; later calls are ignored).
    pub fn on_contention(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_contention.set(Box::new(hook));
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Permits `tenant` holds now.
    pub fn held(&self, tenant: &str) -> usize {
        self.lock().held(tenant)
    }

    /// Whether a claim of `tenant` is waiting for a permit.
    pub fn is_waited_for_by(&self, tenant: &str) -> bool {
        self.lock().waiting.values().any(|w| !w.granted && &*w.tenant == tenant)
    }

    // A panic never happens under this lock, but a poisoned one must not take the host down.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit for `tenant`, waiting (fairly) until `deadline` when the share is full or the
    /// tenant holds its limit.
    pub fn acquire(self: &Arc<Self>, tenant: &Arc<str>, deadline: Deadline) -> Result<Permit, Refused> {
        self.acquire_for(tenant, deadline, Claim::Start)
    }

    fn acquire_for(self: &Arc<Self>, tenant: &Arc<str>, deadline: Deadline, claim: Claim) -> Result<Permit, Refused> {
        self.wait_turn(self.lock(), tenant, deadline, claim).map_err(|e| match self.per_tenant {
            Some(limit) if self.held(tenant) >= limit => Refused::TenantAtLimit { tenant: tenant.to_string(), limit, what: self.what },
            _ => Refused::Expired(e),
        })?;
        Ok(Permit { share: self.clone(), tenant: tenant.clone(), held: true, metered: true, since: Instant::now() })
    }

    /// [`FairShare::acquire`] for work whose time the holder charges itself (a batched run
    /// apportions it between its callers).
    pub fn acquire_unmetered(self: &Arc<Self>, tenant: &Arc<str>, deadline: Deadline) -> Result<Permit, Refused> {
        let mut permit = self.acquire_for(tenant, deadline, Claim::Run)?;
        permit.metered = false;
        Ok(permit)
    }

    /// Take a permit for `tenant`, queueing behind fairer claims; on `Ok` the permit is held.
    fn wait_turn(&self, mut state: MutexGuard<'_, State>, tenant: &Arc<str>, deadline: Deadline, claim: Claim) -> Result<(), Expired> {
        let under_limit = self.per_tenant.is_none_or(|limit| state.held(tenant) < limit);
        // A permit is kept only while every claim's tenant holds one.
        if state.held(tenant) == 0 && state.kept.as_ref().is_some_and(|(keeper, _)| keeper != tenant) {
            state.kept = None;
        }
        if state.total < self.capacity && state.waiting.is_empty() && under_limit && !state.kept_from(tenant, self.capacity) {
            state.take(tenant);
            return Ok(());
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.insert(ticket, Waiter { tenant: tenant.clone(), claim, thread: std::thread::current(), granted: false, quiet: QuietWake::for_current_thread() });
        state.hand_over(self.capacity, self.per_tenant, false);
        let contended = !state.waiting[&ticket].granted;
        drop(state);
        if contended && let Some(hook) = self.on_contention.get() {
            hook();
        }
        loop {
            let mut state = self.lock();
            if state.waiting[&ticket].granted {
                let waiter = state.waiting.remove(&ticket).expect("the ticket is ours");
                drop(state);
                waiter.quiet.after_wake();
                return Ok(());
            }
            let left = deadline.remaining();
            if left.is_some_and(|left| left.is_zero()) {
                state.waiting.remove(&ticket);
                return Err(Expired(format!("a wait for one of the host's {} {}", self.capacity, self.what)));
            }
            drop(state);
            match left {
                None => std::thread::park(),
                Some(left) => std::thread::park_timeout(left),
            }
        }
    }

    fn release(&self, tenant: &Arc<str>) {
        let mut state = self.lock();
        state.give_back(tenant);
        // Kept for the tenant when every waiting tenant already holds a permit: handing it over
        // would wake a thread that the tenant's next call makes yield again at once.
        if let Some(grace) = self.keep.get()
            && state.kept.is_none()
            && state.held(tenant) == 0
            && !state.waiting.is_empty()
            && state.waiting.values().all(|w| w.granted || (w.tenant != *tenant && state.held(&w.tenant) > 0))
        {
            state.kept = Some((tenant.clone(), Instant::now() + *grace));
            return;
        }
        state.hand_over(self.capacity, self.per_tenant, true);
    }

    /// Keep a permit given back by a tenant's last holder free for that tenant for `grace`,
    /// while every waiting claim's tenant holds one already. A tenant calling in sequence
    /// comes back within microseconds; handing its permit to a tenant that has one meant
    /// waking a thread only to make it yield at the tenant's next call, with three threads
    /// wanting two cores in between (and the kernel often queueing the returning thread behind
    /// guest code for a scheduler tick). Kept permits are freed by [`FairShare::tick`], which
    /// the host calls more often than `grace`. Set once; later calls are ignored.
    pub fn keep_for_returning_tenants(&self, grace: Duration) {
        let _ = self.keep.set(grace);
    }

    /// Free a kept permit whose grace has passed, to the claims waiting for it.
    pub fn tick(&self) {
        let mut state = self.lock();
        if state.kept.as_ref().is_some_and(|(_, until)| Instant::now() >= *until) {
            state.kept = None;
            state.hand_over(self.capacity, self.per_tenant, false);
        }
    }
}

/// Keeps a thread handed a permit by a releasing thread from preempting it. The kernel lets a
/// woken thread take the CPU of the thread that woke it; here the waker is finishing its call,
/// and the woken one is about to run guest code until the next scheduler tick (4 ms at
/// HZ=250): in `--bench fairness` that stalled a quiet tenant's searches in their release. So
/// the waker switches the waiter to `SCHED_BATCH`, which never preempts on wake-up, and the
/// waiter switches itself back once it runs. Only a waiter on the default policy is switched:
/// that is the one switch a thread can undo without privileges.
struct QuietWake {
    #[cfg(target_os = "linux")]
    tid: Option<libc::pid_t>,
    #[cfg(target_os = "linux")]
    switched: bool,
}

impl QuietWake {
    fn for_current_thread() -> Self {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: plain syscalls about the calling thread.
            let tid = unsafe { (libc::sched_getscheduler(0) == libc::SCHED_OTHER).then(|| libc::gettid()) };
            QuietWake { tid, switched: false }
        }
        #[cfg(not(target_os = "linux"))]
        QuietWake {}
    }

    fn before_wake(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(tid) = self.tid {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a thread of this process, parked until this waker unparks it.
            self.switched = unsafe { libc::sched_setscheduler(tid, libc::SCHED_BATCH, &param) } == 0;
        }
    }

    fn after_wake(&self) {
        #[cfg(target_os = "linux")]
        if self.switched {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: the calling thread, back to the default policy it had.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
    }
}

/// A permit of a [`FairShare`]; given back when dropped.
pub struct Permit {
    share: Arc<FairShare>,
    tenant: Arc<str>,
    held: bool,
    metered: bool,
    /// When the permit was last taken.
    since: Instant,
}

impl Permit {
    pub fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// Give the permit back for a while (the holder waits on other threads' work).
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.charge();
            self.share.release(&self.tenant);
        }
    }

    fn charge(&self) {
        if self.metered && let Some(meter) = &self.share.meter {
            meter.charge(&self.tenant, self.since.elapsed());
        }
    }

    /// This held permit, to hand to another of its tenant's claims (see [`Slot::released_until`]),
    /// unless a waiting claim of another tenant holds fewer permits: that claim is owed it, and
    /// gets it as the permit is dropped here.
    pub fn to_pass_on(self) -> Option<Permit> {
        let state = self.share.lock();
        let mine = state.held(&self.tenant);
        let owed = state.waiting.values().any(|w| !w.granted && w.tenant != self.tenant && state.held(&w.tenant) < mine);
        drop(state);
        (self.held && !owed).then_some(self)
    }

    /// Take over `handed`, a held permit of the same share and tenant, in place of waiting to
    /// take this one again.
    fn adopt(&mut self, mut handed: Permit) {
        if self.held || !Arc::ptr_eq(&self.share, &handed.share) || self.tenant != handed.tenant {
            return;
        }
        handed.charge();
        handed.held = false;
        self.held = true;
        self.since = Instant::now();
    }

    /// Take the permit again after [`Permit::release`], queueing fairly until `deadline`.
    pub fn reacquire(&mut self, deadline: Deadline) -> Result<(), Expired> {
        if self.held {
            return Ok(());
        }
        self.share.wait_turn(self.share.lock(), &self.tenant, deadline, Claim::Resume)?;
        self.held = true;
        self.since = Instant::now();
        Ok(())
    }

    /// If a tenant holding fewer permits than this one is waiting, hand it this permit and queue
    /// for another. Called every epoch tick by running guest code, this time-slices slots
    /// between tenants: a tenant with one slot more than another gives it up at the next tick, so
    /// over time each tenant with work gets an equal share, and a lone waiter is never starved by
    /// a holder that runs to its deadline.
    pub fn yield_if_contended(&mut self, deadline: Deadline) -> Result<(), Expired> {
        if !self.held {
            return Ok(());
        }
        let mut state = self.share.lock();
        let mine = state.held(&self.tenant);
        if !state.waiting.values().any(|w| !w.granted && state.held(&w.tenant) < mine) {
            return Ok(());
        }
        state.give_back(&self.tenant);
        self.held = false;
        self.charge();
        state.hand_over(self.share.capacity, self.share.per_tenant, false);
        self.share.wait_turn(state, &self.tenant, deadline, Claim::Start)?;
        self.held = true;
        self.since = Instant::now();
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

/// A compute slot shared by a call's thread and what it blocks on (a WASI sleep): released while
/// the call waits, taken again before it computes.
pub struct Slot {
    permit: Mutex<Option<Permit>>,
}

impl Slot {
    pub fn new(permit: Permit) -> Arc<Self> {
        Arc::new(Slot { permit: Mutex::new(Some(permit)) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Permit) -> T) -> Option<T> {
        self.permit.lock().unwrap_or_else(PoisonError::into_inner).as_mut().map(f)
    }

    /// Give the slot back until [`Slot::released`] or a later call takes it again.
    pub fn release(&self) {
        self.with(Permit::release);
    }

    /// Run `wait` without holding the slot, then take it back before `deadline`.
    pub fn released<T>(&self, deadline: Deadline, wait: impl FnOnce() -> T) -> Result<T, Expired> {
        self.released_until(deadline, || (wait(), None))
    }

    /// [`Slot::released`] for a wait that may end with a permit handed on by the thread it
    /// waited for (a model run's, see [`Permit::to_pass_on`]): the slot takes that permit over
    /// instead of queueing for one again.
    pub fn released_until<T>(&self, deadline: Deadline, wait: impl FnOnce() -> (T, Option<Permit>)) -> Result<T, Expired> {
        self.with(Permit::release);
        let (out, handed) = wait();
        if let Some(handed) = handed {
            self.with(|p| p.adopt(handed));
        }
        self.with(|p| p.reacquire(deadline)).unwrap_or(Ok(()))?;
        Ok(out)
    }

    pub fn yield_if_contended(&self, deadline: Deadline) -> Result<(), Expired> {
        self.with(|p| p.yield_if_contended(deadline)).unwrap_or(Ok(()))
    }

    /// Whether the slot is held now (not released while its call waits).
    pub fn is_held(&self) -> bool {
        self.with(|p| p.held) == Some(true)
    }
}

/// Who host work is for: the tenant it is billed to, its deadline, and the compute slot to
/// release while it waits on shared work (a model's batched run).
#[derive(Clone)]
pub struct Caller {
    pub tenant: Arc<str>,
    pub deadline: Deadline,
    pub slot: Option<Arc<Slot>>,
}

impl Caller {
    /// The host itself (the in-process API, tools, benchmarks): no deadline, no slot.
    pub fn host() -> Self {
        Caller { tenant: Arc::from(HOST_TENANT), deadline: Deadline::NONE, slot: None }
    }

    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = deadline;
        self
    }

    /// Run `wait` with the caller's slot released.
    pub fn waiting<T>(&self, wait: impl FnOnce() -> T) -> Result<T, Expired> {
        self.waiting_until(|| (wait(), None))
    }

    /// [`Caller::waiting`] for a wait that may end with a permit handed on (see
    /// [`Slot::released_until`]).
    pub fn waiting_until<T>(&self, wait: impl FnOnce() -> (T, Option<Permit>)) -> Result<T, Expired> {
        match &self.slot {
            Some(slot) => slot.released_until(self.deadline, wait),
            None => Ok(wait().0),
        }
    }

}

/// The tenant name host-internal work is billed to; never a valid tenant name (see
/// [`crate::store::validate_name`]), so no tenant can be confused with it.
pub const HOST_TENANT: &str = "(host)";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tenant(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn compute_slots_meter_the_time_each_tenant_holds_them() {
        let share = FairShare::compute(2);
        let meter = share.meter().unwrap().clone();
        let (a, b) = (tenant("a"), tenant("b"));
        let mut held = share.acquire(&a, Deadline::NONE).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        held.release();
        // Released time is not charged.
        std::thread::sleep(Duration::from_millis(100));
        held.reacquire(Deadline::NONE).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        let used = meter.used("a");
        assert!(used >= Duration::from_millis(50) && used < Duration::from_millis(150), "{used:?}");
        // A batched run charges its callers by rows, not the tenant it queued as.
        let run = share.acquire_unmetered(&b, Deadline::NONE).unwrap();
        drop(run);
        assert_eq!(meter.used("b"), Duration::ZERO);
        meter.apportion(Duration::from_millis(90), [(&a, 1), (&b, 2)]);
        assert_eq!(meter.used("b"), Duration::from_millis(60));
        assert!(meter.used("a") >= used + Duration::from_millis(30));
        assert!(FairShare::new("calls", 1, None).meter().is_none());
    }

    #[test]
    fn a_tenant_at_its_limit_waits_and_others_do_not() {
        let share = FairShare::new("concurrent calls", 8, Some(2));
        let (a, b) = (tenant("a"), tenant("b"));
        let a1 = share.acquire(&a, Deadline::NONE).unwrap();
        let _a2 = share.acquire(&a, Deadline::NONE).unwrap();
        let soon = || Deadline::after(Duration::from_millis(30));
        let err = share.acquire(&a, soon()).err().unwrap();
        assert!(err.to_string().contains("tenant `a` is at its 2 concurrent calls"), "{err}");
        // b is not held up by a's waiting call.
        let _b1 = share.acquire(&b, soon()).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| share.acquire(&a, Deadline::after(Duration::from_secs(5))).map(drop));
            std::thread::sleep(Duration::from_millis(20));
            drop(a1);
            assert!(waiter.join().unwrap().is_ok(), "a waiting call takes a freed permit");
        });
    }

    #[test]
    fn a_full_share_waits_until_the_deadline() {
        let share = FairShare::new("compute slots", 1, None);
        let _held = share.acquire(&tenant("a"), Deadline::NONE).unwrap();
        let start = Instant::now();
        let err = share.acquire(&tenant("b"), Deadline::after(Duration::from_millis(50))).err().unwrap();
        assert!(matches!(err, Refused::Expired(_)), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(share.lock().waiting.len(), 0, "the expired waiter left the queue");
    }

    #[test]
    fn the_tenant_holding_least_goes_first() {
        let share = FairShare::new("compute slots", 2, None);
        let (a, b) = (tenant("a"), tenant("b"));
        let a1 = share.acquire(&a, Deadline::NONE).unwrap();
        let _a2 = share.acquire(&a, Deadline::NONE).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|scope| {
            // a queues first, then b; when a slot frees, b (holding none) goes before a (holding one).
            for (who, delay) in [(a.clone(), 0), (b.clone(), 20)] {
                let (share, order) = (share.clone(), order.clone());
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(delay));
                    let permit = share.acquire(&who, Deadline::NONE).unwrap();
                    order.lock().unwrap().push(who.to_string());
                    std::thread::sleep(Duration::from_millis(20));
                    drop(permit);
                });
            }
            std::thread::sleep(Duration::from_millis(60));
            drop(a1);
        });
        assert_eq!(*order.lock().unwrap(), ["b", "a"]);
    }

    #[test]
    fn a_holder_yields_to_a_tenant_holding_fewer_and_the_waiter_is_signalled() {
        let share = FairShare::new("compute slots", 2, None);
        let signalled = Arc::new(AtomicUsize::new(0));
        let counter = signalled.clone();
        share.on_contention(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let (a, b) = (tenant("a"), tenant("b"));
        let mut a1 = share.acquire(&a, Deadline::NONE).unwrap();
        let mut a2 = share.acquire(&a, Deadline::NONE).unwrap();
        let granted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _b = share.acquire(&b, Deadline::after(Duration::from_secs(5))).unwrap();
                granted.store(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            });
            // A claim on a full share signals the holders (after it queues).
            while signalled.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            // a holds 2 and b none: a yields one slot, and b takes it; a waits for another.
            a1.yield_if_contended(Deadline::after(Duration::from_millis(20))).unwrap_err();
            while granted.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            assert_eq!((share.held("a"), share.held("b")), (1, 1));
            // Equal shares and no one waiting: nothing to yield.
            a2.yield_if_contended(Deadline::NONE).unwrap();
            assert_eq!(share.held("a"), 1);
        });
        a1.reacquire(Deadline::NONE).unwrap();
        assert_eq!(share.held("a"), 2);
    }

    #[test]
    fn one_slot_is_time_sliced_not_held_to_the_end() {
        let share = FairShare::new("compute slots", 1, None);
        let (a, b) = (tenant("a"), tenant("b"));
        let mut a1 = share.acquire(&a, Deadline::NONE).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| share.acquire(&b, Deadline::after(Duration::from_secs(5))).map(drop));
            while share.lock().waiting.is_empty() {
                std::thread::yield_now();
            }
            // a holds the only slot and b holds none: at a's next tick, b goes.
            a1.yield_if_contended(Deadline::after(Duration::from_secs(5))).unwrap();
            assert!(waiter.join().unwrap().is_ok());
        });
        assert_eq!(share.held("a"), 1, "a got the slot back once b was done");
    }

    #[test]
    fn a_tenants_last_permit_is_kept_for_its_next_call_while_waiters_hold_one() {
        let share = FairShare::new("compute slots", 2, None);
        share.keep_for_returning_tenants(Duration::from_millis(1));
        let (a, b) = (tenant("a"), tenant("b"));
        let b1 = share.acquire(&b, Deadline::NONE).unwrap();
        let a1 = share.acquire(&a, Deadline::NONE).unwrap();
        std::thread::scope(|scope| {
            // b holds one and wants another.
            let waiter = scope.spawn(|| share.acquire(&b, Deadline::after(Duration::from_secs(5))).unwrap());
            while share.lock().waiting.is_empty() {
                std::thread::yield_now();
            }
            // a gives back its only permit: kept for a, not handed to b's second claim.
            drop(a1);
            assert_eq!((share.held("a"), share.held("b")), (0, 1));
            let again = share.acquire(&a, Deadline::after(Duration::from_millis(1))).expect("a's next call takes its kept permit at once");
            assert_eq!(share.held("a"), 1);
            // Not coming back: after the grace, a tick hands the permit to b.
            drop(again);
            std::thread::sleep(Duration::from_millis(2));
            share.tick();
            let b2 = waiter.join().unwrap();
            assert_eq!(share.held("b"), 2);
            drop(b2);
        });
        // A waiting tenant holding none is never kept waiting for another's return.
        let a1 = share.acquire(&a, Deadline::NONE).unwrap();
        let c = tenant("c");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| share.acquire(&c, Deadline::after(Duration::from_secs(5))).map(drop));
            while share.lock().waiting.is_empty() {
                std::thread::yield_now();
            }
            drop(b1);
            assert!(waiter.join().unwrap().is_ok(), "c got b's permit without a tick");
        });
        drop(a1);
    }

    #[test]
    fn a_tenants_resuming_calls_go_first_and_its_model_runs_last() {
        let mut state = State::default();
        let (a, b) = (tenant("a"), tenant("b"));
        state.take(&b);
        // Queued oldest first: a's run, a's starting call, b's starting call, a's resuming call.
        for (ticket, (who, claim)) in [(&a, Claim::Run), (&a, Claim::Start), (&b, Claim::Start), (&a, Claim::Resume)].into_iter().enumerate() {
            let waiter = Waiter { tenant: who.clone(), claim, thread: std::thread::current(), granted: false, quiet: QuietWake::for_current_thread() };
            state.waiting.insert(ticket as u64, waiter);
        }
        let mut order = Vec::new();
        for capacity in 2..=5 {
            state.hand_over(capacity, None, false);
            let granted = state.waiting.iter().find(|(_, w)| w.granted).map(|(ticket, _)| *ticket).expect("one claim granted");
            let waiter = state.waiting.remove(&granted).unwrap();
            order.push(format!("{}:{:?}", waiter.tenant, waiter.claim));
        }
        // a holds none, so it goes first, with its resuming call; then tenants alternate, and
        // a's run comes after its starting call although it queued first.
        assert_eq!(order, ["a:Resume", "b:Start", "a:Start", "a:Run"]);
    }

    #[test]
    fn a_runs_permit_passes_to_its_tenants_caller_unless_another_tenant_is_owed_it() {
        let share = FairShare::compute(2);
        let (a, b, x) = (tenant("a"), tenant("b"), tenant("x"));
        let _x = share.acquire(&x, Deadline::NONE).unwrap();
        let slot = Slot::new(share.acquire(&a, Deadline::NONE).unwrap());
        // The call waits on a run that takes the slot the call released, and hands it back.
        slot.released_until(Deadline::NONE, || ((), share.acquire_unmetered(&a, Deadline::NONE).unwrap().to_pass_on())).unwrap();
        assert!(slot.is_held());
        assert_eq!((share.held("a"), share.lock().total), (1, 2), "the permit moved; none was added or lost");
        // While the run computes, b queues holding none: the run's permit is b's when it ends.
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            slot.released_until(Deadline::after(Duration::from_secs(5)), || {
                let run = share.acquire_unmetered(&a, Deadline::NONE).unwrap();
                scope.spawn(|| {
                    let permit = share.acquire(&b, Deadline::after(Duration::from_secs(5))).unwrap();
                    order.lock().unwrap().push("b");
                    std::thread::sleep(Duration::from_millis(20));
                    drop(permit);
                });
                while !share.is_waited_for_by("b") {
                    std::thread::yield_now();
                }
                ((), run.to_pass_on())
            })
            .unwrap();
            order.lock().unwrap().push("a");
        });
        assert_eq!(*order.lock().unwrap(), ["b", "a"], "the caller queued again behind b");
        assert!(slot.is_held() && share.held("b") == 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_woken_by_a_release_runs_on_its_own_policy_again() {
        let share = FairShare::new("compute slots", 1, None);
        let held = share.acquire(&tenant("a"), Deadline::NONE).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let permit = share.acquire(&tenant("b"), Deadline::after(Duration::from_secs(5))).unwrap();
                // SAFETY: a plain query about the calling thread.
                let policy = unsafe { libc::sched_getscheduler(0) };
                drop(permit);
                policy
            });
            while share.lock().waiting.is_empty() {
                std::thread::yield_now();
            }
            drop(held);
            assert_eq!(waiter.join().unwrap(), libc::SCHED_OTHER, "woken as SCHED_BATCH, and left so");
        });
    }

    #[test]
    fn deadlines() {
        assert!(!Deadline::NONE.expired() && Deadline::NONE.remaining().is_none());
        let past = Deadline::at(Instant::now() - Duration::from_millis(1));
        assert!(past.expired() && past.remaining() == Some(Duration::ZERO));
        assert!(past.check("a model run").unwrap_err().to_string().contains("during a model run"));
        let soon = Deadline::after(Duration::from_secs(1));
        assert_eq!(past.latest(soon), soon);
        assert_eq!(soon.latest(Deadline::NONE), Deadline::NONE);
    }
}
