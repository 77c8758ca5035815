//! One persistent thread pool for every CPU op of the process.
//!
//! Spawning threads per op (what `std::thread::scope` does) costs tens of microseconds per op
//! and, when an inference batch and a validator's re-execution run at once, puts twice as many
//! threads on the cores as there are cores. Here the workers are started once, sized to the
//! machine (one fewer than the cores: the calling thread works too), and every backend in the
//! process hands its pieces to the same workers, so concurrent jobs share the cores instead of
//! multiplying threads. A backend still caps how many pieces one op is cut into
//! ([`CpuBackend::with_threads`](crate::CpuBackend::with_threads)), which is how a node gives
//! its inference batcher and its verifier their share.
//!
//! Nothing here changes arithmetic: an op is cut into whole rows (or heads) computed exactly as
//! on one thread, so the pool decides only where a piece runs, never its bits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// How long a thread waits awake for work or for the other pieces before sleeping.
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Spins until `done` or [`SPIN`] has passed; whether `done` became true.
fn spin_until(done: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= SPIN {
            return done();
        }
    }
}

/// One parallel call: `tasks` pieces, claimed one at a time by the caller and the workers.
struct Job {
    /// The caller's closure with its lifetime erased; valid until `finished == tasks`, which the
    /// caller waits for before returning (and before its closure can be dropped).
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    finished: AtomicUsize,
    /// Held to notify `all_done`, so a caller that saw pieces unfinished under it is woken.
    done_lock: Mutex<()>,
    all_done: Condvar,
    panicked: AtomicBool,
}

// SAFETY: `f` points to a `Sync` closure that outlives every use (see `Job::f`); the other
// fields are thread-safe.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs pieces until none is left. `false` once this job has nothing to claim.
    fn work(&self) -> bool {
        let mut ran = false;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return ran;
            }
            ran = true;
            // SAFETY: the piece `i < tasks` is not finished yet, so the caller is still
            // waiting and its closure is alive.
            let f = unsafe { &*self.f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.tasks {
                let _held = self.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                self.all_done.notify_all();
            }
        }
    }
}

/// The process's workers and their queue of jobs with pieces left to claim.
pub(crate) struct Pool {
    queue: Mutex<VecDeque<Arc<Job>>>,
    /// Jobs ever queued: an idle worker spins on it briefly before sleeping.
    pushed: AtomicUsize,
    wake: Condvar,
    workers: usize,
}

impl Pool {
    /// The process-wide pool, started on first use with one worker fewer than the cores.
    pub(crate) fn global() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Pool::start(cores.saturating_sub(1))
        })
    }

    /// A pool with `workers` threads (leaked: it lives as long as the process).
    fn start(workers: usize) -> &'static Pool {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            queue: Mutex::new(VecDeque::new()),
            pushed: AtomicUsize::new(0),
            wake: Condvar::new(),
            workers,
        }));
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("kernels-{i}"))
                .spawn(move || pool.serve());
            if let Err(e) = spawned {
                // Fewer workers only means less parallelism: callers do their own pieces.
                tracing::warn!(error = %e, "kernel pool: could not start a worker");
            }
        }
        tracing::debug!(workers, "kernel thread pool started");
        pool
    }

    fn serve(&self) {
        loop {
            // A model's ops come microseconds apart: wait for the next one awake a moment
            // before sleeping (a futex wake-up per op costs more than the op at batch 1).
            let seen = self.pushed.load(Ordering::Acquire);
            spin_until(|| self.pushed.load(Ordering::Acquire) != seen);
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    // Jobs whose pieces are all claimed leave the queue.
                    while queue
                        .front()
                        .is_some_and(|j| j.next.load(Ordering::Relaxed) >= j.tasks)
                    {
                        queue.pop_front();
                    }
                    if let Some(job) = queue.front() {
                        break job.clone();
                    }
                    queue = self.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            job.work();
        }
    }

    /// Runs `f(0), f(1), …, f(tasks − 1)`, in parallel on the caller and the workers, and
    /// returns when all are done. A panic in any piece is raised again here, after every
    /// piece has finished.
    pub(crate) fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.workers == 0 {
            (0..tasks).for_each(f);
            return;
        }
        // SAFETY: only the lifetime is erased; this function does not return before every
        // piece has finished (below), and no piece reads `f` after finishing.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f,
            tasks,
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            done_lock: Mutex::new(()),
            all_done: Condvar::new(),
            panicked: AtomicBool::new(false),
        });
        {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back(job.clone());
            self.pushed.fetch_add(1, Ordering::AcqRel);
        }
        for _ in 1..tasks.min(self.workers + 1) {
            self.wake.notify_one();
        }
        job.work();
        let all_done = || job.finished.load(Ordering::Acquire) >= tasks;
        if !spin_until(all_done) {
            let mut held = job.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            while !all_done() {
                held = job.all_done.wait(held).unwrap_or_else(|e| e.into_inner());
            }
        }
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a kernel thread panicked");
        }
    }
}

/// Runs `f(0), …, f(tasks − 1)` in parallel on the pool.
pub(crate) fn each(tasks: usize, f: impl Fn(usize) + Sync) {
    Pool::global().run(tasks, &f);
}

/// Cuts `x` into at most `pieces` runs of whole `unit`s (rows) and runs `f` on each, in
/// parallel on the pool.
pub(crate) fn split_rows(x: &mut [f32], unit: usize, pieces: usize, f: impl Fn(&mut [f32]) + Sync) {
    let unit = unit.max(1);
    let units = x.len() / unit;
    let pieces = pieces.clamp(1, units.max(1));
    let per = units.div_ceil(pieces) * unit;
    for_chunks(x, per, pieces, |_, chunk| f(chunk));
}

/// Runs `f(i, chunk)` for each `chunk_len`-long chunk `i` of `x` (the last may be shorter), in
/// parallel on the pool when `pieces` is above 1; the chunks are the pieces.
pub(crate) fn for_chunks(
    x: &mut [f32],
    chunk_len: usize,
    pieces: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let chunk_len = chunk_len.max(1);
    if x.is_empty() {
        return;
    }
    if pieces <= 1 {
        for (i, chunk) in x.chunks_mut(chunk_len).enumerate() {
            f(i, chunk);
        }
        return;
    }
    let cuts: Vec<usize> = (chunk_len..x.len()).step_by(chunk_len).collect();
    for_splits(x, &cuts, f);
}

/// Runs `f(i, piece)` for the pieces of `x` cut at the offsets `cuts` (increasing, each at
/// most `x.len()`), in parallel on the pool.
pub(crate) fn for_splits(x: &mut [f32], cuts: &[usize], f: impl Fn(usize, &mut [f32]) + Sync) {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut rest = x;
    let mut at = 0;
    for &cut in cuts {
        let (piece, tail) = rest.split_at_mut(cut - at);
        pieces.push(Mutex::new(piece));
        rest = tail;
        at = cut;
    }
    pieces.push(Mutex::new(rest));
    if pieces.len() == 1 {
        let only = pieces
            .remove(0)
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        f(0, only);
        return;
    }
    Pool::global().run(pieces.len(), &|i| {
        let mut piece = pieces[i].lock().unwrap_or_else(|e| e.into_inner());
        f(i, &mut piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_runs_once() {
        let pool = Pool::start(3);
        for tasks in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{tasks}"
            );
        }
    }

    #[test]
    fn concurrent_callers_share_the_workers() {
        let pool = Pool::start(2);
        std::thread::scope(|s| {
            for caller in 0..6 {
                s.spawn(move || {
                    for round in 0..50 {
                        let sum = AtomicUsize::new(0);
                        pool.run(9, &|i| {
                            sum.fetch_add(i + caller + round, Ordering::Relaxed);
                        });
                        assert_eq!(sum.into_inner(), 36 + 9 * (caller + round));
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_piece_is_raised_after_all_finish() {
        let pool = Pool::start(2);
        let done = AtomicUsize::new(0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 3 {
                    panic!("piece 3");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(result.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 7);
        // The pool still works.
        let n = AtomicUsize::new(0);
        pool.run(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.into_inner(), 4);
    }

    #[test]
    fn split_rows_covers_whole_rows() {
        let mut x: Vec<f32> = (0..70).map(|v| v as f32).collect();
        split_rows(&mut x, 7, 4, |rows| {
            assert_eq!(rows.len() % 7, 0);
            for v in rows.iter_mut() {
                *v *= 2.0;
            }
        });
        assert!(x.iter().enumerate().all(|(i, v)| *v == 2.0 * i as f32));
    }
}
