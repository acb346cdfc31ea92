//! A tenant run's concurrency slot (one of `sync.max_concurrent_tenants`), held only while the
//! run does work. Code deep in a run that is about to wait for something other than work — the
//! tenant's call budget, a `Retry-After`, a backoff — wraps the wait in [`released`]: the slot is
//! given back for the wait and taken again (behind any run queued meanwhile) before the run goes
//! on, so throttled tenants never keep the others from running.
//!
//! The slot travels with the run's task as a task-local; outside a run, [`released`] just waits.

use std::{
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

tokio::task_local! {
    static SLOT: Slot;
}

/// One run's slot: the semaphore it comes from, and the permit while the run holds it.
#[derive(Clone)]
pub struct Slot {
    permits: Arc<Semaphore>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl Slot {
    /// Waits for a slot from `permits`.
    pub async fn acquire(permits: Arc<Semaphore>) -> Slot {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        Slot {
            permits,
            held: Arc::new(Mutex::new(Some(permit))),
        }
    }

    /// Runs `work` with this slot as its task's slot, so that its waits give it back.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        SLOT.scope(self.clone(), work).await
    }

    fn give_back(&self) {
        self.held.lock().expect("slot").take();
    }

    async fn take_again(&self) {
        if self.held.lock().expect("slot").is_some() {
            return;
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        *self.held.lock().expect("slot") = Some(permit);
    }

    /// Whether the slot is held now.
    pub fn is_held(&self) -> bool {
        self.held.lock().expect("slot").is_some()
    }
}

/// Awaits `wait` with the current run's slot given back, and takes a slot again afterwards.
/// Outside a run (no slot in this task), it only awaits `wait`.
pub async fn released<F: Future>(wait: F) -> F::Output {
    let slot = SLOT.try_with(Slot::clone).ok();
    if let Some(s) = &slot {
        s.give_back();
    }
    let out = wait.await;
    if let Some(s) = &slot {
        s.take_again().await;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_the_slot_to_another_run_and_takes_one_again() {
        let permits = Arc::new(Semaphore::new(1));
        let slot = Slot::acquire(permits.clone()).await;
        assert_eq!(permits.available_permits(), 0);
        let waiting = slot.scope(async {
            released(tokio::time::sleep(Duration::from_secs(60))).await;
        });
        let other = async {
            tokio::task::yield_now().await;
            // the first run waits: its slot is free for this one
            let s = Slot::acquire(permits.clone()).await;
            assert!(s.is_held());
        };
        tokio::join!(waiting, other);
        assert!(slot.is_held());
        assert_eq!(permits.available_permits(), 0);
        drop(slot);
        assert_eq!(permits.available_permits(), 1);
        // outside a run, a wait is only a wait
        released(tokio::time::sleep(Duration::from_secs(1))).await;
    }
}
