//! Long operations (builds, background ingests) as jobs a tenant can poll.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Finished jobs kept per tenant for polling; older ones are forgotten.
const KEEP_FINISHED: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A job as its tenant sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    /// `build` or `ingest`.
    pub kind: String,
    pub collection: String,
    pub state: JobState,
    /// Items done so far (ingest), of `total`.
    pub done: usize,
    pub total: usize,
    /// What the job returned, once it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Job {
    view: JobView,
    done: Arc<AtomicUsize>,
}

/// Progress a running job reports.
#[derive(Clone)]
pub struct Progress(Arc<AtomicUsize>);

impl Progress {
    pub fn set(&self, done: usize) {
        self.0.store(done, Ordering::Release);
    }
}

pub struct Jobs {
    next: AtomicU64,
    max_running_per_tenant: usize,
    /// Per tenant, oldest first.
    by_tenant: Mutex<BTreeMap<String, VecDeque<Job>>>,
    running: AtomicUsize,
}

impl Jobs {
    pub fn new(max_running_per_tenant: usize) -> Self {
        Jobs { next: AtomicU64::new(1), max_running_per_tenant, by_tenant: Mutex::default(), running: AtomicUsize::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<Job>>> {
        self.by_tenant.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Jobs running on this server now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Register a running job, unless the tenant already runs its limit.
    pub fn start(&self, tenant: &str, kind: &str, collection: &str, total: usize) -> Result<(String, Progress), usize> {
        let mut all = self.lock();
        let jobs = all.entry(tenant.to_string()).or_default();
        if jobs.iter().filter(|j| j.view.state == JobState::Running).count() >= self.max_running_per_tenant {
            return Err(self.max_running_per_tenant);
        }
        let id = format!("job-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let done = Arc::new(AtomicUsize::new(0));
        jobs.push_back(Job {
            view: JobView { id: id.clone(), kind: kind.into(), collection: collection.into(), state: JobState::Running, done: 0, total, result: None, error: None },
            done: done.clone(),
        });
        while jobs.len() > KEEP_FINISHED && jobs.front().is_some_and(|j| j.view.state != JobState::Running) {
            jobs.pop_front();
        }
        self.running.fetch_add(1, Ordering::AcqRel);
        Ok((id, Progress(done)))
    }

    pub fn finish(&self, tenant: &str, id: &str, outcome: Result<serde_json::Value, String>) {
        let mut all = self.lock();
        if let Some(job) = all.get_mut(tenant).and_then(|jobs| jobs.iter_mut().find(|j| j.view.id == id)) {
            job.view.done = job.done.load(Ordering::Acquire);
            match outcome {
                Ok(result) => {
                    job.view.state = JobState::Succeeded;
                    job.view.result = Some(result);
                }
                Err(error) => {
                    job.view.state = JobState::Failed;
                    job.view.error = Some(error);
                }
            }
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// One of `tenant`'s jobs; another tenant's id is not found.
    pub fn get(&self, tenant: &str, id: &str) -> Option<JobView> {
        let all = self.lock();
        let job = all.get(tenant)?.iter().find(|j| j.view.id == id)?;
        let mut view = job.view.clone();
        if view.state == JobState::Running {
            view.done = job.done.load(Ordering::Acquire);
        }
        Some(view)
    }

    pub fn list(&self, tenant: &str) -> Vec<JobView> {
        let ids: Vec<String> = self.lock().get(tenant).map(|jobs| jobs.iter().map(|j| j.view.id.clone()).collect()).unwrap_or_default();
        ids.iter().filter_map(|id| self.get(tenant, id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_per_tenant_capped_and_report_progress() {
        let jobs = Jobs::new(1);
        let (id, progress) = jobs.start("a", "ingest", "docs", 10).unwrap();
        assert_eq!(jobs.start("a", "build", "docs", 0).err(), Some(1), "a's one running job is its limit");
        let (other, _) = jobs.start("b", "build", "docs", 0).unwrap();
        progress.set(4);
        assert_eq!(jobs.get("a", &id).unwrap().done, 4);
        assert!(jobs.get("a", &other).is_none(), "b's job is not a's to see");
        assert_eq!(jobs.running(), 2);
        jobs.finish("a", &id, Err("strategy failed".into()));
        let view = jobs.get("a", &id).unwrap();
        assert_eq!((view.state, view.error.as_deref()), (JobState::Failed, Some("strategy failed")));
        assert_eq!(jobs.running(), 1);
        jobs.start("a", "build", "docs", 0).unwrap();
        assert_eq!(jobs.list("a").len(), 2);
    }
}
