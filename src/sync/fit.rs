//! How many runs go at once (`sync.max_concurrent_tenants`): the number configured, or, by
//! default (0), as many as a pass needs to end within about [`PASS_TARGET`], given how long a
//! run has lately taken in its slot, and never fewer than [`MIN_RUNS`] nor more than
//! [`MAX_RUNS`]. A run spends most of its time waiting for the API, so a fleet of thousands of
//! tenants needs dozens of runs at once to fit the default one-minute schedule; a backfilling
//! run holds a batch of at most 256 KiB of alerts in memory, which bounds what many at once
//! cost.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Semaphore;

/// The length a pass aims for: a quarter of the default one-minute schedule.
pub const PASS_TARGET: Duration = Duration::from_secs(15);
/// The fewest runs at once when the number is derived. On SQLite every write of every run queues
/// for the one writer (`store/sqlite_writer.rs`), which adds a few milliseconds to each run of a
/// busy fleet: at 8 at once (the former default) the benchmark's 1,000 tenants at 50 ms a call
/// took 8.0–8.6 s a pass, at 16 at once 4.9 s. Each run's calls go to its own tenant's API, so
/// more at once does not spend any tenant's call budget faster.
pub const MIN_RUNS: usize = 16;
/// The most runs at once when the number is derived.
pub const MAX_RUNS: usize = 64;
/// What a run is assumed to take before any has been measured.
const FIRST_GUESS: Duration = Duration::from_millis(100);
/// The weight of the newest run in the running mean.
const WEIGHT: f64 = 0.02;

/// The runs needed for `runs` of `mean_run` each to take [`PASS_TARGET`], within the bounds.
pub fn fitted(runs: usize, mean_run: Duration) -> usize {
    let needed = runs as f64 * mean_run.as_secs_f64() / PASS_TARGET.as_secs_f64();
    (needed.ceil() as usize).clamp(MIN_RUNS, MAX_RUNS)
}

/// The slots runs take ([`crate::slot`]) and how many there are.
pub struct Concurrency {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
}

struct State {
    /// Permits in circulation (taken or free).
    limit: usize,
    /// The configured number, or `None` to derive it.
    fixed: Option<usize>,
    /// The running mean of a run's time in its slot, in seconds.
    mean_run: f64,
}

impl Concurrency {
    /// `configured` runs at once, or derived when 0.
    pub fn new(configured: usize) -> Self {
        let limit = if configured == 0 {
            MIN_RUNS
        } else {
            configured
        };
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            state: Mutex::new(State {
                limit,
                fixed: (configured > 0).then_some(configured),
                mean_run: FIRST_GUESS.as_secs_f64(),
            }),
        }
    }

    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// Runs at once now.
    pub fn limit(&self) -> usize {
        self.state.lock().expect("concurrency").limit
    }

    /// Sizes the slots for a pass of `runs` runs (a derived number only). Slots in use when
    /// the number shrinks are withdrawn as they come back, at the next passes.
    pub fn fit(&self, runs: usize) {
        let mut st = self.state.lock().expect("concurrency");
        if st.fixed.is_some() || runs == 0 {
            return;
        }
        let want = fitted(runs, Duration::from_secs_f64(st.mean_run));
        let before = st.limit;
        if want > st.limit {
            self.permits.add_permits(want - st.limit);
            st.limit = want;
        } else if want < st.limit {
            st.limit -= self.permits.forget_permits(st.limit - want);
        }
        if st.limit != before {
            tracing::info!(
                concurrent_tenants = st.limit,
                runs,
                mean_run_ms = (st.mean_run * 1000.0) as u64,
                "runs at once adjusted to the fleet"
            );
        }
    }

    /// Takes a finished run's time in its slot into the running mean.
    pub fn observe(&self, took: Duration) {
        let mut st = self.state.lock().expect("concurrency");
        st.mean_run += WEIGHT * (took.as_secs_f64() - st.mean_run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_is_sized_to_end_within_the_target() {
        let ms = Duration::from_millis;
        // 10,000 runs of 75 ms: 750 s of runs in 15 s
        assert_eq!(fitted(10_000, ms(75)), 50);
        // small fleets get the floor; huge or slow ones stop at the bound
        assert_eq!(fitted(1_000, ms(100)), MIN_RUNS);
        assert_eq!(fitted(0, ms(100)), MIN_RUNS);
        assert_eq!(fitted(10_000, ms(500)), MAX_RUNS);
        assert_eq!(fitted(3_000, ms(150)), 30);
    }

    #[tokio::test]
    async fn derived_slots_grow_and_shrink_and_configured_ones_stay() {
        let c = Concurrency::new(0);
        assert_eq!(c.limit(), MIN_RUNS);
        c.fit(7_500);
        assert_eq!(c.limit(), 50);
        assert_eq!(c.permits().available_permits(), 50);
        // runs turn out faster: 10 ms each
        for _ in 0..1_000 {
            c.observe(Duration::from_millis(10));
        }
        let held = c.permits().acquire_many_owned(45).await.unwrap();
        c.fit(10_000);
        // five were free and are withdrawn now; the rest when they come back
        assert_eq!(c.limit(), 45);
        drop(held);
        c.fit(10_000);
        assert_eq!(c.limit(), MIN_RUNS);
        assert_eq!(c.permits().available_permits(), MIN_RUNS);

        let fixed = Concurrency::new(3);
        fixed.fit(10_000);
        assert_eq!(fixed.limit(), 3);
        assert_eq!(fixed.permits().available_permits(), 3);
    }
}
