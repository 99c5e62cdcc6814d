//! Dynamic batching: concurrent requests to one model, from any plugin or tenant, become one
//! ONNX Runtime run of up to `batch.max_batch` inputs. Requests that queue while a run is busy
//! join the next run; `batch.max_delay_ms` optionally waits longer for more. Tokenizing and
//! image decoding happen on the callers' threads, in parallel; only the run is shared.
//!
//! A lone request that finds a lane idle and nothing queued runs on its caller's thread, in the
//! caller's compute slot: handing it to a worker and back cost two thread wake-ups a call, and
//! on a busy host each wake-up could queue the thread behind another tenant's guest code for
//! a scheduler slice (milliseconds). While other calls of the caller's tenant wait for a slot
//! it queues instead, so that they join its run rather than each wait for a run of its own.

use super::ModelError;
use super::manifest::ModelManifest;
use super::watchdog::Watched;
use crate::capacity::{Caller, Deadline, Expired, FairShare, Permit};
use anyhow::anyhow;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

/// One tokenized text, unpadded, with any slot vectors and the positions they replace.
#[derive(Default)]
pub(crate) struct TextRow {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    /// Segment ids of text pairs; empty means all zeros.
    pub type_ids: Vec<i64>,
    pub slots: Vec<(usize, Vec<f32>)>,
}

/// Padded tokens per row a run of `max_batch` texts may average: texts longer than this run in
/// smaller parts. A run cannot be interrupted, so this bounds how long one tenant's long texts
/// hold the model while another's short query waits: in `--bench serve_http` (MiniLM, 2 cores)
/// a quiet tenant's p99 beside 256-text embeds of long texts went from 623 ms at 64 per row to
/// 166 ms at 16, while 32 short queries still run at once.
const TOKENS_PER_ROW: usize = 16;
/// Texts up to this many tokens count as short: they join one another's runs whatever their
/// lengths.
const SHORT_TEXT: usize = 16;

/// One request's model inputs.
pub(crate) enum Inputs {
    Text(Vec<TextRow>),
    /// Preprocessed images, `3 * side * side` floats each.
    Pixels { side: usize, rows: Vec<Vec<f32>> },
    /// Projector inputs, `dim` floats each.
    Vectors { dim: usize, rows: Vec<Vec<f32>> },
}

impl Inputs {
    pub(crate) fn len(&self) -> usize {
        match self {
            Inputs::Text(rows) => rows.len(),
            Inputs::Pixels { rows, .. } | Inputs::Vectors { rows, .. } => rows.len(),
        }
    }

    /// The rows in runs of at most `max` rows and, for texts, about `max * TOKENS_PER_ROW`
    /// padded tokens, so that no one run of long texts holds the model for long (one run for a
    /// request that fits).
    pub(crate) fn split(self, max: usize) -> Vec<Inputs> {
        fn chunks<T>(rows: Vec<T>, max: usize) -> Vec<Vec<T>> {
            let mut out = Vec::with_capacity(rows.len().div_ceil(max.max(1)));
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                out.push(rows.by_ref().take(max.max(1)).collect());
            }
            out
        }
        if self.len() <= max && !matches!(&self, Inputs::Text(rows) if rows.len() * rows.iter().map(|r| r.ids.len()).max().unwrap_or(0) > max * TOKENS_PER_ROW) {
            return vec![self];
        }
        if let Inputs::Text(rows) = self {
            let budget = max.max(1) * TOKENS_PER_ROW;
            let mut out: Vec<Vec<TextRow>> = Vec::new();
            let mut longest = 0;
            for row in rows {
                let fits = out.last().is_some_and(|part| part.len() < max && (part.len() + 1) * longest.max(row.ids.len()) <= budget);
                if !fits {
                    out.push(Vec::new());
                    longest = 0;
                }
                longest = longest.max(row.ids.len());
                out.last_mut().expect("pushed above").push(row);
            }
            return out.into_iter().map(Inputs::Text).collect();
        }
        match self {
            Inputs::Text(_) => unreachable!("handled above"),
            Inputs::Pixels { side, rows } => chunks(rows, max).into_iter().map(|rows| Inputs::Pixels { side, rows }).collect(),
            Inputs::Vectors { dim, rows } => chunks(rows, max).into_iter().map(|rows| Inputs::Vectors { dim, rows }).collect(),
        }
    }

    /// The longest text's tokens (0 for images and vectors).
    fn longest(&self) -> usize {
        match self {
            Inputs::Text(rows) => rows.iter().map(|r| r.ids.len()).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn joins(&self, other: &Inputs) -> bool {
        match (self, other) {
            (Inputs::Text(_), Inputs::Text(_)) => true,
            (Inputs::Pixels { side: a, .. }, Inputs::Pixels { side: b, .. }) => a == b,
            (Inputs::Vectors { dim: a, .. }, Inputs::Vectors { dim: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// A request's rows of one output of a (possibly shared) run.
pub(crate) struct Output {
    /// The output's shape, with this request's row count first.
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
    /// Text runs: this request's rows of the attention mask as padded for the run, and the
    /// padded length.
    pub mask: Option<(Vec<i64>, usize)>,
}

struct Job {
    inputs: Inputs,
    output: String,
    tenant: Arc<str>,
    deadline: Deadline,
    /// When it was queued, for the queue-delay figures.
    queued: Instant,
    /// Whether the caller waits for this job alone (a request of one part), and so can take
    /// over the run's compute slot when it hears back.
    whole: bool,
    reply: Reply,
}

/// A job's result, with the run's compute permit when it is handed on to the job's caller.
type Answer = (Result<Output, ModelError>, Option<Permit>);
type Reply = mpsc::SyncSender<Answer>;
/// Jobs' replies and their results, to send once a run's lane is given back.
type Replies = Vec<(Reply, Result<Output, ModelError>)>;

/// One lane: a session pair, run by a worker for queued jobs or by a lone caller itself.
struct Lane {
    session: Session,
    token_embeddings: Option<Session>,
}

/// The queue in front of one model's sessions (its lanes), served by one worker thread per lane.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
    compute: Arc<FairShare>,
}

/// What the submitting callers and the workers share.
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued, a lane is freed, or the batcher closes.
    changed: Condvar,
    lanes: Vec<Mutex<Lane>>,
    manifest: ModelManifest,
    stats: Stats,
}

struct Queue {
    jobs: FairQueue,
    /// Lanes no run holds now.
    idle: Vec<usize>,
    /// Per tenant, the runs going now that hold its jobs.
    running: HashMap<Arc<str>, usize>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one tenant's jobs may be in at once: all lanes but one, so another tenant's job
    /// always finds a lane that no long run of this tenant holds.
    fn per_tenant(&self) -> usize {
        self.lanes.len().saturating_sub(1).max(1)
    }

    /// Take an idle lane for a run holding `tenants`' jobs.
    fn claim<'a>(self: &Arc<Self>, queue: &mut Queue, tenants: impl IntoIterator<Item = &'a Arc<str>>) -> Option<Claimed> {
        let lane = queue.idle.pop()?;
        let mut claimed = Claimed { shared: self.clone(), lane, tenants: Vec::new() };
        claimed.count_in(&mut queue.running, tenants);
        Some(claimed)
    }
}

/// A lane held for one run; given back (and the run counted out) when dropped, even by a panic.
struct Claimed {
    shared: Arc<Shared>,
    lane: usize,
    tenants: Vec<Arc<str>>,
}

impl Claimed {
    fn lane(&self) -> MutexGuard<'_, Lane> {
        self.shared.lanes[self.lane].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Add queued jobs to `batch` as a worker takes them for a run, counting this run in for
    /// the tenants it adds.
    fn top_up(&mut self, batch: &mut Vec<Job>) {
        let shared = self.shared.clone();
        let (max_batch, per_tenant, by_length) = (shared.manifest.batch.max_batch, shared.per_tenant(), shared.lanes.len() > 1);
        let mut queue = shared.lock();
        let Queue { jobs, running, .. } = &mut *queue;
        let before = batch.len();
        let ours = &self.tenants;
        jobs.fill(batch, max_batch, by_length, |tenant| !ours.iter().any(|t| &**t == tenant) && at_lane_limit(running, tenant, per_tenant));
        self.count_in(running, batch[before..].iter().map(|job| &job.tenant));
    }

    /// Count this run in for each of `tenants` it does not hold jobs of yet.
    fn count_in<'a>(&mut self, running: &mut HashMap<Arc<str>, usize>, tenants: impl IntoIterator<Item = &'a Arc<str>>) {
        for tenant in tenants {
            if !self.tenants.contains(tenant) {
                *running.entry(tenant.clone()).or_default() += 1;
                self.tenants.push(tenant.clone());
            }
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let mut queue = self.shared.lock();
        queue.idle.push(self.lane);
        for tenant in &self.tenants {
            if let Some(n) = queue.running.get_mut(tenant) {
                *n -= 1;
                if *n == 0 {
                    queue.running.remove(tenant);
                }
            }
        }
        let waiting = !queue.jobs.is_empty() || queue.closed;
        drop(queue);
        if waiting {
            self.shared.changed.notify_all();
        }
    }
}

/// Whether `tenant` is in as many runs as it may be at once.
fn at_lane_limit(running: &HashMap<Arc<str>, usize>, tenant: &str, per_tenant: usize) -> bool {
    running.get(tenant).is_some_and(|&n| n >= per_tenant)
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

#[derive(Default)]
struct Stats {
    runs: AtomicU64,
    inputs: AtomicU64,
    /// Jobs that reached a run, and the microseconds they waited in the queue in all.
    waited_jobs: AtomicU64,
    waited_micros: AtomicU64,
}

impl Batcher {
    /// One lane per session pair: the model's graph, and the embedding layer of an
    /// inputs_embeds text encoder (see [`SlotSpec`](super::manifest::SlotSpec)). Each run takes
    /// one of `compute`'s slots.
    pub fn start(lanes: Vec<(Session, Option<Session>)>, manifest: &ModelManifest, compute: Arc<FairShare>) -> std::io::Result<Self> {
        assert!(!lanes.is_empty(), "a model has at least one lane");
        let workers = lanes.len();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { jobs: FairQueue::default(), idle: (0..lanes.len()).rev().collect(), running: HashMap::new(), closed: false }),
            changed: Condvar::new(),
            lanes: lanes.into_iter().map(|(session, token_embeddings)| Mutex::new(Lane { session, token_embeddings })).collect(),
            manifest: manifest.clone(),
            stats: Stats::default(),
        });
        for n in 0..workers {
            let worker = Worker { shared: shared.clone(), compute: compute.clone() };
            std::thread::Builder::new().name(format!("quarry-model-{}-{n}", manifest.name)).spawn(move || worker.serve())?;
        }
        Ok(Batcher { shared, compute })
    }

    /// Runs made, and inputs run, so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.shared.stats.runs.load(Ordering::Relaxed), self.shared.stats.inputs.load(Ordering::Relaxed))
    }

    /// Jobs that reached a run, and how long they waited in the queue in all.
    pub fn queue_stats(&self) -> (u64, Duration) {
        let stats = &self.shared.stats;
        (stats.waited_jobs.load(Ordering::Relaxed), Duration::from_micros(stats.waited_micros.load(Ordering::Relaxed)))
    }

    /// Run `inputs` (alone or with other callers' inputs) and return this request's rows of
    /// `output`. It stops waiting at its deadline (a run still going then is terminated once no
    /// caller of it is left). A caller holding a compute slot whose request can run at once (one
    /// part, nothing queued, a lane idle and not at its tenant's limit, no other call of its
    /// tenant waiting for a slot) runs it on its own thread, in that slot. Otherwise the request
    /// queues and the slot is released while it waits, so a caller queued behind others holds
    /// no slot idle; the slot of a worker's run may come back with the answer.
    #[cfg(test)]
    pub fn run(&self, inputs: Inputs, output: &str, caller: &Caller) -> Result<Output, ModelError> {
        Ok(self.run_parts(vec![inputs], output, caller)?.pop().expect("one part in, one out"))
    }

    /// [`Batcher::run`] for a request split into parts (each at most a run's rows): all parts
    /// queue at once as the caller's jobs, so a large request takes its runs in turn with other
    /// tenants' jobs instead of holding the model for one long run. Outputs in part order.
    pub fn run_parts(&self, mut parts: Vec<Inputs>, output: &str, caller: &Caller) -> Result<Vec<Output>, ModelError> {
        caller.deadline.check("a model run")?;
        if let Some(meter) = self.compute.meter() {
            meter.admit(&caller.tenant)?;
        }
        // A run on this thread would hold the slot that the tenant's waiting calls need to
        // queue their inputs for the same run.
        let computing = caller.slot.as_ref().is_some_and(|slot| slot.is_held()) && !self.compute.is_waited_for_by(&caller.tenant);
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(ModelError::Runtime(anyhow!("the model's workers have stopped")));
        }
        let lone = computing && parts.len() == 1 && queue.jobs.is_empty() && !at_lane_limit(&queue.running, &caller.tenant, self.shared.per_tenant());
        if lone && let Some(claimed) = self.shared.claim(&mut queue, [&caller.tenant]) {
            drop(queue);
            let stats = &self.shared.stats;
            stats.waited_jobs.fetch_add(1, Ordering::Relaxed);
            let inputs = parts.pop().expect("one part");
            return run(&mut claimed.lane(), &self.shared.manifest, stats, &[&inputs], output, caller.deadline);
        }
        let mut answers = Vec::with_capacity(parts.len());
        let whole = parts.len() == 1;
        for inputs in parts {
            let (reply, answer) = mpsc::sync_channel(1);
            let tenant = caller.tenant.clone();
            queue.jobs.push(Job { inputs, output: output.to_string(), tenant, deadline: caller.deadline, queued: Instant::now(), whole, reply });
            answers.push(answer);
        }
        drop(queue);
        self.shared.changed.notify_all();
        let wait = |answers: Vec<mpsc::Receiver<Answer>>| {
            let mut handed = None;
            let results = answers
                .into_iter()
                .map(|answer| match caller.deadline.remaining() {
                    None => answer.recv().map_err(|_| false),
                    Some(left) => answer.recv_timeout(left).map_err(|e| matches!(e, mpsc::RecvTimeoutError::Timeout)),
                })
                .map(|answer| answer.map(|(result, permit)| {
                    handed = handed.take().or(permit);
                    result
                }))
                .collect::<Vec<_>>();
            (results, handed)
        };
        caller
            .waiting_until(|| wait(answers))?
            .into_iter()
            .map(|answer| match answer {
                Ok(result) => result,
                Err(true) => Err(ModelError::Expired(Expired("a model run".into()))),
                Err(false) => Err(ModelError::Runtime(anyhow!("the model's worker stopped during the run"))),
            })
            .collect()
    }
}

/// Runs queued jobs in whichever lane is idle.
struct Worker {
    shared: Arc<Shared>,
    compute: Arc<FairShare>,
}

/// Jobs received and not yet run, per tenant, oldest first.
#[derive(Default)]
struct FairQueue {
    pending: BTreeMap<Arc<str>, VecDeque<Job>>,
    /// The tenant whose job led the last run; the next run starts with the tenant after it.
    last_served: Option<Arc<str>>,
}

impl FairQueue {
    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn push(&mut self, job: Job) {
        self.pending.entry(job.tenant.clone()).or_default().push_back(job);
    }

    fn rows(&self) -> usize {
        self.pending.values().flatten().map(|j| j.inputs.len()).sum()
    }

    /// Tenants in serving order: the one after the last served first, round the ring.
    fn tenant_order(&self) -> Vec<Arc<str>> {
        let mut tenants: Vec<Arc<str>> = self.pending.keys().cloned().collect();
        if let Some(last) = &self.last_served {
            let after = tenants.iter().position(|t| t > last).unwrap_or(0);
            tenants.rotate_left(after);
        }
        tenants
    }

    /// One run's jobs, taken round-robin across tenants, so a tenant with many queued jobs
    /// cannot keep another's out of the next run; none of a tenant that is `busy`. Jobs whose
    /// callers have gone are dropped. With `by_length` (more than one lane), texts join only
    /// texts of a similar length, so a short query is never held in a long text's run while
    /// another lane could run it.
    fn next_batch(&mut self, max_batch: usize, by_length: bool, busy: impl Fn(&str) -> bool) -> Vec<Job> {
        let mut batch = Vec::new();
        self.fill(&mut batch, max_batch, by_length, busy);
        batch
    }

    /// [`FairQueue::next_batch`], adding to the jobs already in `batch`.
    fn fill(&mut self, batch: &mut Vec<Job>, max_batch: usize, by_length: bool, busy: impl Fn(&str) -> bool) {
        for queue in self.pending.values_mut() {
            queue.retain(|job| {
                let gone = job.deadline.expired();
                if gone {
                    let _ = job.reply.send((Err(ModelError::Expired(Expired("a wait for a model run".into()))), None));
                }
                !gone
            });
        }
        self.pending.retain(|_, queue| !queue.is_empty());
        let mut rows: usize = batch.iter().map(|j| j.inputs.len()).sum();
        let mut longest = batch.iter().map(|j| j.inputs.longest()).max().unwrap_or(0);
        'fill: loop {
            let mut took = false;
            for tenant in self.tenant_order() {
                if busy(&tenant) {
                    continue;
                }
                let Some(queue) = self.pending.get_mut(&tenant) else { continue };
                let Some(job) = queue.front() else { continue };
                let fits = match batch.first() {
                    None => true,
                    Some(lead) => {
                        let padded = (rows + job.inputs.len()) * longest.max(job.inputs.longest());
                        let (a, b) = (longest, job.inputs.longest());
                        let similar = !by_length || a.max(b) <= 2 * a.min(b).max(SHORT_TEXT);
                        lead.inputs.joins(&job.inputs) && lead.output == job.output && rows + job.inputs.len() <= max_batch && padded <= max_batch * TOKENS_PER_ROW && similar
                    }
                };
                if !fits {
                    continue;
                }
                let job = queue.pop_front().expect("front was Some");
                if batch.is_empty() {
                    self.last_served = Some(tenant.clone());
                }
                rows += job.inputs.len();
                longest = longest.max(job.inputs.longest());
                batch.push(job);
                took = true;
                if rows >= max_batch {
                    break 'fill;
                }
            }
            if !took {
                break;
            }
        }
        self.pending.retain(|_, queue| !queue.is_empty());
    }
}

impl Worker {
    fn serve(self) {
        let max_batch = self.shared.manifest.batch.max_batch;
        let delay = Duration::from_millis(self.shared.manifest.batch.max_delay_ms);
        let (per_tenant, by_length) = (self.shared.per_tenant(), self.shared.lanes.len() > 1);
        loop {
            let mut queue = self.shared.lock();
            let (batch, mut claimed) = loop {
                if queue.closed && queue.jobs.is_empty() {
                    return;
                }
                if !queue.jobs.is_empty() && !queue.idle.is_empty() {
                    // Wait for more only while the delay lasts and the run is not full.
                    let until = Instant::now() + delay;
                    while queue.jobs.rows() < max_batch && !queue.closed {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        queue = self.shared.changed.wait_timeout(queue, left).unwrap_or_else(PoisonError::into_inner).0;
                    }
                    let Queue { jobs, running, idle, .. } = &mut *queue;
                    let batch = match idle.is_empty() {
                        true => Vec::new(),
                        false => jobs.next_batch(max_batch, by_length, |tenant| at_lane_limit(running, tenant, per_tenant)),
                    };
                    if !batch.is_empty() {
                        let claimed = self.shared.claim(&mut queue, batch.iter().map(|job| &job.tenant)).expect("a lane was idle under this lock");
                        break (batch, claimed);
                    }
                }
                // Nothing to run, no idle lane, or every queued tenant is at its lane limit.
                queue = self.shared.changed.wait(queue).unwrap_or_else(PoisonError::into_inner);
            };
            drop(queue);
            let (replies, pass) = self.run_batch(&mut claimed, batch);
            // Counted out before the callers hear back, so a caller's next request finds the
            // lane idle.
            drop(claimed);
            // The run's slot goes on to the leading caller, unless another tenant is owed it:
            // queueing for it again put the caller behind its own tenant's next run.
            let (to, mut permit) = pass.map_or((None, None), |(to, permit)| (Some(to), permit.to_pass_on()));
            for (n, (reply, result)) in replies.into_iter().enumerate() {
                let handed = if to == Some(n) { permit.take() } else { None };
                let _ = reply.send((result, handed));
            }
        }
    }

    /// The jobs whose tenants may compute more; the others are answered in `replies`. Parts
    /// queued before a tenant's budget ran out do not run after it.
    fn admitted(&self, jobs: Vec<Job>, replies: &mut Replies) -> Vec<Job> {
        let meter = self.compute.meter();
        jobs.into_iter()
            .filter_map(|job| match meter.map_or(Ok(()), |m| m.admit(&job.tenant)) {
                Ok(()) => Some(job),
                Err(refused) => {
                    replies.push((job.reply, Err(ModelError::OverBudget(refused))));
                    None
                }
            })
            .collect()
    }

    /// Run `batch` in `claimed`'s lane; each job's reply and result, and the run's compute
    /// permit with the reply of the leading job (its tenant's), when that job's run succeeded.
    fn run_batch(&self, claimed: &mut Claimed, batch: Vec<Job>) -> (Replies, Option<(usize, Permit)>) {
        let mut replies = Vec::new();
        let mut batch = self.admitted(batch, &mut replies);
        if batch.is_empty() {
            return (replies, None);
        }
        // The callers released their slots while they wait: the run computes in one taken as
        // the leading job's tenant, for as long as any caller still waits.
        let waiting = batch.iter().map(|j| j.deadline).reduce(Deadline::latest).unwrap_or(Deadline::NONE);
        let slot = match self.compute.acquire_unmetered(&batch[0].tenant, waiting) {
            Ok(slot) => slot,
            Err(e) => {
                replies.extend(batch.into_iter().map(|job| (job.reply, Err(ModelError::Runtime(anyhow!("{e}"))))));
                return (replies, None);
            }
        };
        // Jobs queued while the run waited for its slot join it: in a tenant's turn on a busy
        // host those are its calls that took the slot first, and they would wait a run more.
        let before = batch.len();
        claimed.top_up(&mut batch);
        let added = batch.split_off(before);
        batch.extend(self.admitted(added, &mut replies));
        let stats = &self.shared.stats;
        for job in &batch {
            stats.waited_jobs.fetch_add(1, Ordering::Relaxed);
            stats.waited_micros.fetch_add(job.queued.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let deadline = batch.iter().map(|j| j.deadline).reduce(Deadline::latest).unwrap_or(Deadline::NONE);
        let meter = self.compute.meter();
        let manifest = &self.shared.manifest;
        let mut lane = claimed.lane();
        let inputs: Vec<&Inputs> = batch.iter().map(|j| &j.inputs).collect();
        // Each caller is charged the run's time in proportion to its rows.
        let started = Instant::now();
        let ran = run(&mut lane, manifest, stats, &inputs, &batch[0].output, deadline);
        if let Some(meter) = meter {
            meter.apportion(started.elapsed(), batch.iter().map(|j| (&j.tenant, j.inputs.len())));
        }
        let mut pass = None;
        match ran {
            Ok(outputs) => {
                let lead = &batch[0].tenant;
                pass = batch.iter().position(|job| job.whole && job.tenant == *lead).map(|n| (replies.len() + n, slot));
                replies.extend(batch.into_iter().zip(outputs).map(|(job, output)| (job.reply, Ok(output))));
            }
            // One caller's bad input must not fail the others: run each alone.
            Err(ModelError::Runtime(_)) if batch.len() > 1 => {
                for job in batch {
                    let started = Instant::now();
                    let result = run(&mut lane, manifest, stats, &[&job.inputs], &job.output, job.deadline).map(|mut o| o.remove(0));
                    if let Some(meter) = meter {
                        meter.charge(&job.tenant, started.elapsed());
                    }
                    replies.push((job.reply, result));
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut batch = batch.into_iter();
                replies.extend(batch.next().map(|job| (job.reply, Err(e))));
                replies.extend(batch.map(|job| (job.reply, Err(ModelError::Runtime(anyhow!("{message}"))))));
            }
        }
        (replies, pass)
    }
}

/// One session run over the concatenated inputs; returns each request's rows.
fn run(lane: &mut Lane, manifest: &ModelManifest, stats: &Stats, parts: &[&Inputs], output: &str, deadline: Deadline) -> Result<Vec<Output>, ModelError> {
    let watched = Watched::new(deadline)?;
    let name = &manifest.name;
    let counts: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    let n: usize = counts.iter().sum();
    let mut feed: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = Vec::new();
    let mut text_mask = None;
    match parts[0] {
        Inputs::Text(_) => {
            let spec = manifest.tokenizer.as_ref().expect("validated: text encoders have a tokenizer section");
            let rows: Vec<&TextRow> = parts
                .iter()
                .flat_map(|p| match p {
                    Inputs::Text(rows) => rows.iter(),
                    _ => unreachable!("batches hold one kind of input"),
                })
                .collect();
            let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
            // Fixed-length exports (CLIP's 77) get `pad_to`; others pad to the longest text.
            let seq = spec.pad_to.map_or(longest, |p| p.max(longest));
            let mut ids = vec![spec.pad_id as i64; n * seq];
            let mut mask = vec![0i64; n * seq];
            let mut type_ids = vec![0i64; n * seq];
            for (row, r) in rows.iter().enumerate() {
                ids[row * seq..row * seq + r.ids.len()].copy_from_slice(&r.ids);
                mask[row * seq..row * seq + r.mask.len()].copy_from_slice(&r.mask);
                type_ids[row * seq..row * seq + r.type_ids.len()].copy_from_slice(&r.type_ids);
            }
            let shape = vec![n as i64, seq as i64];
            let tensor = |data: Vec<i64>| Tensor::from_array((shape.clone(), data)).map_err(|e| anyhow!("{e}"));
            let names = &manifest.inputs;
            let slots = manifest.slots.as_ref();
            if let (Some(lookup), Some(slots)) = (&mut lane.token_embeddings, slots) {
                // inputs_embeds: look every token up, then put slot vectors in place.
                let ids = tensor(ids)?;
                let looked_up = lookup.run_with_options(ort::inputs![ids], watched.options()).map_err(|e| watched.explain(e, &format!("the token-embeddings graph of `{name}`")))?;
                let (got, data) = looked_up[0].try_extract_tensor::<f32>().map_err(|e| anyhow!("token embeddings of `{name}` are not f32: {e}"))?;
                if got[..] != [n as i64, seq as i64, slots.dim as i64] {
                    return Err(ModelError::Runtime(anyhow!(
                        "the token-embeddings graph of `{name}` returned {got:?}, not [{n}, {seq}, {}] (`slots.dim`)",
                        slots.dim
                    )));
                }
                let mut embeds = data.to_vec();
                for (row, r) in rows.iter().enumerate() {
                    for (pos, vector) in &r.slots {
                        let at = (row * seq + pos) * slots.dim;
                        embeds[at..at + slots.dim].copy_from_slice(vector);
                    }
                }
                let embeds = Tensor::from_array((vec![n as i64, seq as i64, slots.dim as i64], embeds)).map_err(|e| anyhow!("{e}"))?;
                feed.push((slots.embeds_input.clone().into(), embeds.into()));
            } else if let Some(input) = &names.input_ids {
                feed.push((input.clone().into(), tensor(ids)?.into()));
            }
            if let Some(input) = &names.attention_mask {
                feed.push((input.clone().into(), tensor(mask.clone())?.into()));
            }
            if let Some(input) = &names.token_type_ids {
                feed.push((input.clone().into(), tensor(type_ids)?.into()));
            }
            // A graph with slot inputs always takes them; rows without slots pass zeros.
            if let Some((slots, mask_input)) = slots.and_then(|s| s.mask_input.as_ref().map(|m| (s, m))) {
                let mut embeds = vec![0f32; n * seq * slots.dim];
                let mut slot_mask = vec![0f32; n * seq];
                for (row, r) in rows.iter().enumerate() {
                    for (pos, vector) in &r.slots {
                        let at = (row * seq + pos) * slots.dim;
                        embeds[at..at + slots.dim].copy_from_slice(vector);
                        slot_mask[row * seq + pos] = 1.0;
                    }
                }
                let embeds = Tensor::from_array((vec![n as i64, seq as i64, slots.dim as i64], embeds)).map_err(|e| anyhow!("{e}"))?;
                let slot_mask = Tensor::from_array((shape.clone(), slot_mask)).map_err(|e| anyhow!("{e}"))?;
                feed.push((slots.embeds_input.clone().into(), embeds.into()));
                feed.push((mask_input.clone().into(), slot_mask.into()));
            }
            text_mask = Some((mask, seq));
        }
        Inputs::Pixels { side, .. } => {
            let mut pixels = Vec::with_capacity(n * 3 * side * side);
            for part in parts {
                if let Inputs::Pixels { rows, .. } = part {
                    rows.iter().for_each(|r| pixels.extend_from_slice(r));
                }
            }
            let tensor = Tensor::from_array((vec![n as i64, 3, *side as i64, *side as i64], pixels)).map_err(|e| anyhow!("{e}"))?;
            let input = manifest.inputs.pixel_values.clone().expect("validated: image encoders name pixel_values");
            feed.push((input.into(), tensor.into()));
        }
        Inputs::Vectors { dim, .. } => {
            let mut data = Vec::with_capacity(n * dim);
            for part in parts {
                if let Inputs::Vectors { rows, .. } = part {
                    rows.iter().for_each(|r| data.extend_from_slice(r));
                }
            }
            let tensor = Tensor::from_array((vec![n as i64, *dim as i64], data)).map_err(|e| anyhow!("{e}"))?;
            let input = manifest.inputs.vectors.clone().expect("validated: projectors name their vectors input");
            feed.push((input.into(), tensor.into()));
        }
    }
    stats.runs.fetch_add(1, Ordering::Relaxed);
    stats.inputs.fetch_add(n as u64, Ordering::Relaxed);
    let outputs = lane.session.run_with_options(feed, watched.options()).map_err(|e| watched.explain(e, &format!("model `{name}`")))?;
    let value = outputs.get(output).ok_or_else(|| anyhow!("model `{name}` produced no output `{output}`"))?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("model `{name}` output `{output}` is not an f32 tensor: {e}"))?;
    if shape.first().copied() != Some(n as i64) {
        return Err(ModelError::Runtime(anyhow!("model `{name}` returned {shape:?} for {n} inputs")));
    }
    let row_size = data.len() / n.max(1);
    let mut start = 0;
    Ok(counts
        .into_iter()
        .map(|count| {
            let mut part_shape = shape.to_vec();
            part_shape[0] = count as i64;
            let mask = text_mask.as_ref().map(|(mask, seq)| (mask[start * seq..(start + count) * seq].to_vec(), *seq));
            let part = Output { shape: part_shape, data: data[start * row_size..(start + count) * row_size].to_vec(), mask };
            start += count;
            part
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::Slot;
    use std::path::Path;

    /// The real MiniLM from `vendor/` (installed by scripts/setup.sh), batching with a delay so
    /// concurrent test requests surely share runs.
    fn minilm() -> Batcher {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/minilm-l6.json");
        let mut manifest = ModelManifest::load(&path).expect("run scripts/setup.sh to install the MiniLM model");
        manifest.batch.max_delay_ms = 200;
        let session = Session::builder(super::super::environment().unwrap()).unwrap().commit_from_file(&manifest.files.model).unwrap();
        Batcher::start(vec![(session, None)], &manifest, FairShare::new("compute slots", 2, None)).unwrap()
    }

    #[test]
    fn a_bad_input_fails_only_its_own_caller() {
        let batcher = Arc::new(minilm());
        let results: Vec<(bool, Result<Output, ModelError>)> = std::thread::scope(|scope| {
            let callers: Vec<_> = (0..8)
                .map(|i| {
                    let batcher = batcher.clone();
                    scope.spawn(move || {
                        // 600 positions overrun MiniLM's 512 position embeddings: that run fails.
                        let bad = i == 3;
                        let len = if bad { 600 } else { 3 + i };
                        let ids: Vec<i64> = (0..len).map(|t| if t == 0 { 101 } else { 2000 + t as i64 }).collect();
                        let row = TextRow { ids, mask: vec![1; len], ..Default::default() };
                        (bad, batcher.run(Inputs::Text(vec![row]), "last_hidden_state", &Caller::host()))
                    })
                })
                .collect();
            callers.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (bad, result) in results {
            match (bad, result) {
                (true, Err(e)) => assert!(e.to_string().contains("model `minilm-l6` failed"), "{e}"),
                (false, Ok(out)) => assert_eq!((out.shape[0], out.shape[2]), (1, 384)),
                (bad, other) => panic!("bad={bad}: {:?}", other.map(|o| o.shape)),
            }
        }
        let (runs, inputs) = batcher.stats();
        assert!(inputs > runs, "the callers never shared a run (runs {runs}, inputs {inputs})");
        // Every caller's job reached a run, and jobs that shared one waited for it.
        let (jobs, waited) = batcher.queue_stats();
        assert_eq!(jobs, 8);
        assert!(waited > Duration::ZERO);
    }

    fn job(tenant: &str, rows: usize, deadline: Deadline) -> (Job, mpsc::Receiver<Answer>) {
        let (reply, answer) = mpsc::sync_channel(1);
        let inputs = Inputs::Vectors { dim: 1, rows: vec![vec![0.0]; rows] };
        (Job { inputs, output: "out".into(), tenant: Arc::from(tenant), deadline, queued: Instant::now(), whole: true, reply }, answer)
    }

    #[test]
    fn a_large_request_runs_in_parts_that_take_turns_with_other_tenants() {
        let parts = Inputs::Vectors { dim: 1, rows: vec![vec![0.0]; 100] }.split(32);
        assert_eq!(parts.iter().map(Inputs::len).collect::<Vec<_>>(), [32, 32, 32, 4]);
        assert_eq!(Inputs::Text((0..5).map(|_| TextRow::default()).collect()).split(32).len(), 1);
        // Long texts run in smaller parts: 32 texts of 256 tokens at 16 per row is 2 a run.
        let long = |n: usize| TextRow { ids: vec![1; n], ..Default::default() };
        let long_parts = Inputs::Text((0..32).map(|_| long(256)).collect()).split(32);
        assert_eq!(long_parts.iter().map(Inputs::len).collect::<Vec<_>>(), [2; 16]);
        assert_eq!(Inputs::Text((0..32).map(|_| long(16)).collect()).split(32).len(), 1, "32 short queries run at once");
        let mixed = Inputs::Text(vec![long(10), long(10), long(600), long(10)]).split(32);
        assert_eq!(mixed.iter().map(Inputs::len).collect::<Vec<_>>(), [2, 1, 1], "a text over the budget runs alone");
        let mut queue = FairQueue::default();
        for part in parts {
            let (mut big, _) = job("big", 0, Deadline::NONE);
            big.inputs = part;
            queue.push(big);
        }
        queue.push(job("small", 1, Deadline::NONE).0);
        let tenants = |batch: &[Job]| batch.iter().map(|j| (j.tenant.to_string(), j.inputs.len())).collect::<Vec<_>>();
        // The small job waits for one part of the large request, not for all of it.
        assert_eq!(tenants(&queue.next_batch(32, false, |_| false)), [("big".to_string(), 32)]);
        assert_eq!(tenants(&queue.next_batch(32, false, |_| false)), [("small".to_string(), 1)]);
        // Parts of long texts are not joined back into one long run.
        let mut queue = FairQueue::default();
        for part in long_parts {
            let (mut job, _) = job("big", 0, Deadline::NONE);
            job.inputs = part;
            queue.push(job);
        }
        assert_eq!(tenants(&queue.next_batch(32, false, |_| false)), [("big".to_string(), 2)]);
    }

    /// MiniLM in one lane, computing in `share`'s slots.
    fn minilm_sharing(share: &Arc<FairShare>) -> Batcher {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/minilm-l6.json");
        let manifest = ModelManifest::load(&path).expect("run scripts/setup.sh to install the MiniLM model");
        let session = Session::builder(super::super::environment().unwrap()).unwrap().commit_from_file(&manifest.files.model).unwrap();
        Batcher::start(vec![(session, None)], &manifest, share.clone()).unwrap()
    }

    fn query_row() -> TextRow {
        TextRow { ids: vec![101, 2023, 102], mask: vec![1; 3], ..Default::default() }
    }

    #[test]
    fn a_lone_callers_slot_goes_to_its_run_not_to_a_waiting_tenant() {
        let share = FairShare::compute(1);
        let batcher = minilm_sharing(&share);
        let quiet: Arc<str> = Arc::from("quiet");
        let caller = Caller { tenant: quiet.clone(), deadline: Deadline::after(Duration::from_secs(10)), slot: Some(Slot::new(share.acquire(&quiet, Deadline::NONE).unwrap())) };
        let taken = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            // Another tenant waits for the only slot, and would hold it for a long time.
            scope.spawn(|| {
                let _held = share.acquire(&Arc::from("busy"), Deadline::NONE).unwrap();
                taken.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
            });
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let out = batcher.run(Inputs::Text(vec![query_row()]), "last_hidden_state", &caller).unwrap();
            assert_eq!(out.shape[0], 1);
            // Had the caller released its slot, the waiting tenant would have taken it and the
            // run would have waited its 300 ms.
            assert!(!taken.load(Ordering::SeqCst), "the slot went to the waiting tenant during the run");
            assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
            drop(caller);
        });
        assert!(taken.load(Ordering::SeqCst));
        let queue = batcher.shared.lock();
        assert!(queue.idle.len() == 1 && queue.running.is_empty(), "every run is counted out once it ended");
    }

    #[test]
    fn a_tenants_calls_waiting_for_its_slot_join_one_run() {
        let share = FairShare::compute(1);
        let batcher = minilm_sharing(&share);
        let quiet: Arc<str> = Arc::from("quiet");
        let call = || {
            let slot = Slot::new(share.acquire(&quiet, Deadline::after(Duration::from_secs(10))).unwrap());
            let caller = Caller { tenant: quiet.clone(), deadline: Deadline::after(Duration::from_secs(10)), slot: Some(slot) };
            batcher.run(Inputs::Text(vec![query_row()]), "last_hidden_state", &caller).unwrap().shape[0]
        };
        let first = Slot::new(share.acquire(&quiet, Deadline::NONE).unwrap());
        std::thread::scope(|scope| {
            // Two more calls of the tenant wait for its only slot.
            let others = [scope.spawn(call), scope.spawn(call)];
            while !share.is_waited_for_by("quiet") {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            let caller = Caller { tenant: quiet.clone(), deadline: Deadline::after(Duration::from_secs(10)), slot: Some(first.clone()) };
            assert_eq!(batcher.run(Inputs::Text(vec![query_row()]), "last_hidden_state", &caller).unwrap().shape[0], 1);
            first.release();
            for other in others {
                assert_eq!(other.join().unwrap(), 1);
            }
        });
        // Run alone on the first call's thread, each query would have kept the others waiting
        // for a run of its own; queued, they wait for one run, which takes them all.
        assert_eq!(batcher.stats(), (1, 3), "(runs, inputs)");
        drop(first);
        assert_eq!(share.held("quiet"), 0, "every permit came back");
    }

    #[test]
    fn a_tenants_long_runs_leave_a_lane_for_another_tenants_short_query() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/minilm-l6.json");
        let manifest = ModelManifest::load(&path).expect("run scripts/setup.sh to install the MiniLM model");
        let session = || Session::builder(super::super::environment().unwrap()).unwrap().commit_from_file(&manifest.files.model).unwrap();
        let row = |len: usize| TextRow { ids: (0..len).map(|t| if t == 0 { 101 } else { 2000 + t as i64 }).collect(), mask: vec![1; len], ..Default::default() };
        let long = || Inputs::Text((0..4).map(|_| row(128)).collect());
        let short = || Inputs::Text(vec![row(8)]);
        let tenant = |name: &str| Caller { tenant: Arc::from(name), deadline: Deadline::after(Duration::from_secs(60)), slot: None };
        let waited = |lanes: usize| {
            let batcher = Batcher::start((0..lanes).map(|_| (session(), None)).collect(), &manifest, FairShare::new("compute slots", 2, None)).unwrap();
            // A session's first run is slower (it sizes its buffers): time the second.
            batcher.run(long(), "last_hidden_state", &tenant("flood")).unwrap();
            let started = Instant::now();
            batcher.run(long(), "last_hidden_state", &tenant("flood")).unwrap();
            let long_run = started.elapsed();
            let waited = std::thread::scope(|scope| {
                // Two flooding callers, each with runs of four 128-token texts queued.
                for _ in 0..2 {
                    scope.spawn(|| batcher.run_parts((0..4).map(|_| long()).collect(), "last_hidden_state", &tenant("flood")).unwrap());
                }
                std::thread::sleep(long_run / 3);
                let started = Instant::now();
                batcher.run(short(), "last_hidden_state", &tenant("quiet")).unwrap();
                started.elapsed()
            });
            (waited, long_run)
        };
        // One lane: the short query waits for the flood's run under way. Two: the second lane is
        // never given to the flood, so it runs at once.
        let ((one, _), (two, long_run)) = (waited(1), waited(2));
        assert!(two < long_run / 2 && two * 2 < one, "waited {two:?} with 2 lanes, {one:?} with 1; a long run takes {long_run:?}");
    }

    #[test]
    fn runs_take_jobs_round_robin_across_tenants() {
        let mut queue = FairQueue::default();
        for _ in 0..6 {
            queue.push(job("flood", 4, Deadline::NONE).0);
        }
        queue.push(job("quiet", 1, Deadline::NONE).0);
        // The first run is led by the first tenant in order and already holds quiet's job.
        let tenants = |batch: &[Job]| batch.iter().map(|j| j.tenant.to_string()).collect::<Vec<_>>();
        assert_eq!(tenants(&queue.next_batch(8, false, |_| false)), ["flood", "quiet"]);
        queue.push(job("quiet", 1, Deadline::NONE).0);
        // The next run starts after the last leader: quiet goes first although flood queued earlier.
        assert_eq!(tenants(&queue.next_batch(5, false, |_| false)), ["quiet", "flood"]);
        assert_eq!(queue.rows(), 16);
    }

    #[test]
    fn callers_gone_past_their_deadline_are_dropped_and_told() {
        let mut queue = FairQueue::default();
        let (gone, answer) = job("a", 1, Deadline::at(Instant::now() - Duration::from_millis(1)));
        queue.push(gone);
        queue.push(job("b", 1, Deadline::NONE).0);
        let batch = queue.next_batch(8, false, |_| false);
        assert_eq!(batch.len(), 1);
        assert!(matches!(answer.try_recv(), Ok((Err(ModelError::Expired(_)), None))));
    }

    #[test]
    fn a_caller_stops_waiting_at_its_deadline() {
        let batcher = minilm();
        let long: Vec<i64> = (0..400).map(|t| 2000 + t).collect();
        let row = || TextRow { ids: long.clone(), mask: vec![1; long.len()], ..Default::default() };
        let caller = Caller::host().with_deadline(Deadline::after(Duration::from_millis(1)));
        let start = Instant::now();
        let result = batcher.run(Inputs::Text((0..32).map(|_| row()).collect()), "last_hidden_state", &caller);
        assert!(matches!(result, Err(ModelError::Expired(_))), "{:?}", result.map(|o| o.shape));
        assert!(start.elapsed() < Duration::from_millis(150), "{:?}", start.elapsed());
        // The worker is still serving.
        let ok = batcher.run(Inputs::Text(vec![row()]), "last_hidden_state", &Caller::host()).unwrap();
        assert_eq!(ok.shape[0], 1);
        // A worker's run is counted out before its caller hears back, so the caller's next
        // request finds the lane idle.
        assert_eq!(batcher.shared.lock().idle.len(), 1);
    }
}
