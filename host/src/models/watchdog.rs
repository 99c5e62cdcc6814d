//! Stops model runs at their deadline through ONNX Runtime's run-level terminate flag: one
//! thread watches every run in flight that has a deadline.

use super::ModelError;
use crate::capacity::{Deadline, Expired};
use anyhow::anyhow;
use ort::session::RunOptions;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Instant;

type Key = (Instant, u64);

struct Watchdog {
    runs: Mutex<BTreeMap<Key, Arc<RunOptions>>>,
    changed: Condvar,
    next: AtomicU64,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog { runs: Mutex::default(), changed: Condvar::new(), next: AtomicU64::new(0) }));
        std::thread::Builder::new()
            .name("quarry-model-watchdog".into())
            .spawn(move || dog.serve())
            .expect("the host can start a thread");
        dog
    })
}

impl Watchdog {
    fn serve(&self) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            while let Some(entry) = runs.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                // A run that already finished ignores the flag; its guard removes nothing then.
                let _ = entry.remove().terminate();
            }
            runs = match runs.keys().next().map(|(at, _)| at.saturating_duration_since(now)) {
                Some(wait) => self.changed.wait_timeout(runs, wait).unwrap_or_else(PoisonError::into_inner).0,
                None => self.changed.wait(runs).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

/// Run options for one model run, terminated at `deadline` while this value lives.
pub(crate) struct Watched {
    options: Arc<RunOptions>,
    key: Option<Key>,
    deadline: Deadline,
}

impl Watched {
    pub fn new(deadline: Deadline) -> Result<Self, ModelError> {
        deadline.check("a model run")?;
        let options = Arc::new(RunOptions::new().map_err(|e| anyhow!("cannot make run options: {e}"))?);
        let key = deadline.instant().map(|at| {
            let dog = watchdog();
            let key = (at, dog.next.fetch_add(1, Ordering::Relaxed));
            let mut runs = dog.runs.lock().unwrap_or_else(PoisonError::into_inner);
            runs.insert(key, options.clone());
            // The watchdog sleeps until the earliest deadline; only an earlier one needs it
            // now (waking it for every run put one more thread on a busy CPU per run).
            let earliest = runs.first_key_value().is_some_and(|(first, _)| *first == key);
            drop(runs);
            if earliest {
                dog.changed.notify_one();
            }
            key
        });
        Ok(Watched { options, key, deadline })
    }

    pub fn options(&self) -> &RunOptions {
        &self.options
    }

    /// The error of a failed run: the deadline's when it had passed (the watchdog stopped it).
    pub fn explain(&self, error: impl std::fmt::Display, what: &str) -> ModelError {
        if self.deadline.expired() {
            ModelError::Expired(Expired(what.to_string()))
        } else {
            ModelError::Runtime(anyhow!("{what} failed: {error}"))
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            watchdog().runs.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        }
    }
}
