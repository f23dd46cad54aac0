//! A team of threads for the forward pass natively: the calling thread and `n − 1` helpers
//! that split each parallel piece of work ([`Team::chunks`]) between them and, between two
//! pieces, wait for the next by spinning for a while before they sleep.
//!
//! A token's forward pass is a few dozen such pieces (each product, the attention, the
//! experts), with a little serial work between them. Rayon's workers go to sleep as soon as
//! they find nothing to steal, and waking one takes a system call and a few tens of
//! microseconds, so at the start of each piece one thread worked alone: decoding the Kimi K2
//! shape left a thread idle 8 % of the time. Helpers that spin through the gaps start at once.
//!
//! A piece is a number of chunks, claimed one at a time from a shared counter by whichever
//! thread is free, so uneven chunks balance themselves. Work started inside a piece (a nested
//! [`Team::chunks`]) runs on the thread that started it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    /// The team this thread leads, inside [`lead`].
    static LEADING: RefCell<Option<Team>> = const { RefCell::new(None) };
    /// This thread is a team's helper.
    static HELPER: Cell<bool> = const { Cell::new(false) };
}

/// The teams, by size: a process keeps one of each size it has used (as rayon keeps its
/// pools); a generation that finds its size's team in use (two at once) runs on rayon's pool.
/// (`None`: the team of that size is in use.)
fn idle() -> &'static Mutex<HashMap<usize, Option<Team>>> {
    static IDLE: OnceLock<Mutex<HashMap<usize, Option<Team>>>> = OnceLock::new();
    IDLE.get_or_init(Default::default)
}

/// Runs `work` on this thread as the leader of a team of `threads` threads, or gives `work`
/// back if no team of that size is free and none can be started.
pub(crate) fn lead<T, W: FnOnce() -> T>(threads: usize, work: W) -> Result<T, W> {
    if HELPER.get() || LEADING.with_borrow(|t| t.is_some()) {
        return Err(work);
    }
    let team = {
        let mut teams = idle().lock().unwrap_or_else(|e| e.into_inner());
        match teams.get_mut(&threads) {
            Some(slot) => slot.take(),
            None => Team::new(threads).inspect(|_| {
                teams.insert(threads, None);
            }),
        }
    };
    let Some(team) = team else { return Err(work) };
    LEADING.set(Some(team));
    // Handed back even if `work` panics.
    struct Back(usize);
    impl Drop for Back {
        fn drop(&mut self) {
            if let Some(team) = LEADING.take() {
                idle().lock().unwrap_or_else(|e| e.into_inner()).insert(self.0, Some(team));
            }
        }
    }
    let _back = Back(threads);
    Ok(work())
}

/// Runs `run(i)` for every `i` in `0..chunks` on the team this thread leads (or, on a
/// helper, here: work nested in a chunk), and says so; `false` outside any team.
pub(crate) fn chunks(chunks: usize, run: &(dyn Fn(usize) + Sync)) -> bool {
    if HELPER.get() {
        (0..chunks).for_each(run);
        return true;
    }
    LEADING.with_borrow(|team| match team {
        Some(team) => {
            team.chunks(chunks, run);
            true
        }
        None => false,
    })
}

/// How long a helper spins for the next piece of work before it sleeps: longer than the serial
/// gaps of a forward pass (tens to hundreds of microseconds), short enough that an idle
/// process stops using the cores at once for the eye.
const SPIN: Duration = Duration::from_millis(2);

/// Bits of [`Shared::claim`] for the next chunk's index and for the chunk count.
const INDEX_BITS: u32 = 24;

/// The largest number of chunks a piece can have (more run in several pieces).
const MAX_CHUNKS: usize = (1 << INDEX_BITS) - 1;

/// A piece of work: its chunks' function, on the stack of the thread that runs
/// [`Team::chunks`] for as long as any of its chunks is unfinished.
struct Piece<'a> {
    run: &'a (dyn Fn(usize) + Sync),
}

/// What the team's threads share.
struct Shared {
    /// The current piece: its sequence number (high 16 bits), chunk count and the next chunk
    /// to claim (`INDEX_BITS` each). A chunk is claimed by moving the index on with a
    /// compare-and-swap that also checks the sequence number, so no thread runs a chunk of a
    /// piece that has finished.
    claim: AtomicU64,
    /// The current piece, valid while it has an unfinished chunk.
    piece: AtomicPtr<Piece<'static>>,
    /// Chunks of the current piece finished (or panicked).
    done: AtomicUsize,
    /// A chunk of the current piece panicked.
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// How long helpers spin before they sleep: [`SPIN`], or nothing for a team with more
    /// threads than the machine has cores (a spinning helper would hold a core another needs).
    spin: Duration,
    /// Helpers asleep (or about to be) until the next piece.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The calling thread and its helpers.
pub(crate) struct Team {
    shared: Arc<Shared>,
    threads: usize,
    /// A piece is running: work started inside it runs where it was started.
    busy: Cell<bool>,
}

fn sequence(claim: u64) -> u64 {
    claim >> (2 * INDEX_BITS)
}

fn count(claim: u64) -> usize {
    ((claim >> INDEX_BITS) & MAX_CHUNKS as u64) as usize
}

fn index(claim: u64) -> usize {
    (claim & MAX_CHUNKS as u64) as usize
}

impl Shared {
    /// Claims and runs chunks of the piece numbered `seq` until none is left.
    fn work(&self, seq: u64) {
        let mut claim = self.claim.load(Ordering::Acquire);
        while sequence(claim) == seq && index(claim) < count(claim) {
            match self.claim.compare_exchange_weak(claim, claim + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: the chunk claimed is unfinished, so its piece is still on the stack
                    // of the thread waiting for it (`Team::chunks` returns only once every chunk
                    // is done), and `piece` was written before the claim that published it.
                    let piece = unsafe { &*self.piece.load(Ordering::Acquire) };
                    let chunk = index(claim);
                    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (piece.run)(chunk))) {
                        self.panicked.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(panic);
                    }
                    self.done.fetch_add(1, Ordering::AcqRel);
                    claim = self.claim.load(Ordering::Acquire);
                }
                Err(now) => claim = now,
            }
        }
    }

    /// A helper's life: wait for a piece (spinning, then asleep), work on it, again.
    fn helper(&self) {
        let mut seen = sequence(self.claim.load(Ordering::Acquire));
        loop {
            let started = Instant::now();
            let mut spins = 0u32;
            loop {
                let now = sequence(self.claim.load(Ordering::Acquire));
                if now != seen {
                    seen = now;
                    break;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(1024) && started.elapsed() >= self.spin {
                    // Asleep until a new piece is announced: counted first, so that the thread
                    // announcing it either sees the count and wakes us, or we see its piece.
                    self.sleeping.fetch_add(1, Ordering::SeqCst);
                    let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                    while sequence(self.claim.load(Ordering::SeqCst)) == seen {
                        guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(guard);
                    self.sleeping.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                std::hint::spin_loop();
            }
            self.work(seen);
        }
    }
}

impl Team {
    /// A team of `threads` threads (the caller's and `threads − 1` helpers started now), or
    /// `None` if the system would not start them.
    fn new(threads: usize) -> Option<Team> {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            piece: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            spin: if std::thread::available_parallelism().is_ok_and(|cores| threads <= cores.get()) { SPIN } else { Duration::ZERO },
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 1..threads.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new().name(format!("candlewick-{i}")).spawn(move || {
                HELPER.set(true);
                shared.helper()
            }).ok()?;
        }
        Some(Team { shared, threads: threads.max(1), busy: Cell::new(false) })
    }

    /// Runs `run(i)` for every `i` in `0..chunks`, each once, on the team's threads; returns
    /// when all have. Called inside another piece, runs them here, in order. A panic in a chunk
    /// is raised here once every chunk has finished.
    fn chunks(&self, chunks: usize, run: &(dyn Fn(usize) + Sync)) {
        if self.busy.get() || self.threads == 1 || chunks <= 1 {
            (0..chunks).for_each(run);
            return;
        }
        self.busy.set(true);
        for first in (0..chunks).step_by(MAX_CHUNKS) {
            let here = (chunks - first).min(MAX_CHUNKS);
            let shifted = |i: usize| run(first + i);
            self.piece(here, &shifted);
        }
        self.busy.set(false);
        if let Some(panic) = self.shared.panicked.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(panic);
        }
    }

    fn piece(&self, chunks: usize, run: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        let piece = Piece { run };
        // SAFETY: the pointer is only followed by a thread holding an unfinished chunk of this
        // piece, and this function returns only when every chunk has finished.
        let erased = unsafe { std::mem::transmute::<*const Piece<'_>, *mut Piece<'static>>(&piece) };
        s.piece.store(erased, Ordering::Release);
        s.done.store(0, Ordering::Release);
        let seq = (sequence(s.claim.load(Ordering::Acquire)) + 1) & 0xFFFF;
        s.claim.store(seq << (2 * INDEX_BITS) | (chunks as u64) << INDEX_BITS, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(seq);
        while s.done.load(Ordering::Acquire) < chunks {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `work` led by a team of `threads`, once the team is free (the crate's other tests use
    /// teams too, at the same time).
    fn leading<T>(threads: usize, work: impl Fn() -> T) -> T {
        let started = Instant::now();
        loop {
            match lead(threads, &work) {
                Ok(done) => return done,
                Err(_) if started.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => panic!("no team of {threads} threads came free in a minute"),
            }
        }
    }

    /// Sums of chunks of `0..n` through `crate::native::parallel_chunks`, as a product's rows go.
    fn chunk_sums(n: usize, chunk: usize) -> Vec<u64> {
        let mut data: Vec<u64> = (0..n as u64).collect();
        crate::native::parallel_chunks(&mut data, chunk, |i, part| {
            let first = (i * chunk) as u64;
            for (k, v) in part.iter_mut().enumerate() {
                assert_eq!(*v, first + k as u64, "chunk {i} got someone else's values");
                *v = *v * 3 + 1;
            }
        });
        data
    }

    #[test]
    fn every_chunk_runs_once_on_its_own_values() {
        let expected = |n: usize| (0..n as u64).map(|v| v * 3 + 1).collect::<Vec<_>>();
        let all_once = leading(2, || {
            // Many pieces in a row (a forward pass's products), of every shape, including a
            // last chunk shorter than the others and a single chunk.
            for round in 0..2000 {
                let (n, chunk) = (1 + round % 97, 1 + round % 13);
                assert_eq!(chunk_sums(n, chunk), expected(n), "{n} values in chunks of {chunk}");
            }
            // Each chunk claimed once, counted by the chunks themselves.
            let runs: Vec<AtomicUsize> = (0..5000).map(|_| AtomicUsize::new(0)).collect();
            assert!(chunks(runs.len(), &|i| {
                runs[i].fetch_add(1, Ordering::Relaxed);
            }));
            runs.iter().all(|r| r.load(Ordering::Relaxed) == 1)
        });
        assert!(all_once);
    }

    #[test]
    fn nested_work_runs_where_it_starts() {
        let outer = leading(4, || {
            let mut outer = vec![Vec::new(); 8];
            crate::native::parallel_chunks(&mut outer, 1, |i, slot| slot[0] = chunk_sums(10 + i, 3));
            outer
        });
        for (i, sums) in outer.iter().enumerate() {
            assert_eq!(sums, &(0..(10 + i) as u64).map(|v| v * 3 + 1).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_team_goes_on() {
        let caught = std::panic::catch_unwind(|| {
            leading(5, || chunks(64, &|i| assert!(i != 37, "chunk 37 fails")));
        });
        let message = caught.expect_err("the chunk's panic is raised in the caller");
        let text = message.downcast_ref::<&str>().map(|m| m.to_string()).or_else(|| message.downcast_ref::<String>().cloned());
        assert_eq!(text.as_deref(), Some("chunk 37 fails"));
        // The team was handed back and works.
        assert_eq!(lead(5, || chunk_sums(50, 7)).ok(), Some((0..50u64).map(|v| v * 3 + 1).collect()));
    }

    #[test]
    fn a_team_in_use_sends_the_next_caller_elsewhere() {
        assert!(leading(3, || lead(3, || ()).is_err()), "a leader cannot lead a second team");
        // Two threads at once: both finish, whichever has the team.
        let both = std::thread::scope(|s| {
            let a = s.spawn(|| crate::native::with_threads(Some(3), || chunk_sums(1000, 10)));
            let b = s.spawn(|| crate::native::with_threads(Some(3), || chunk_sums(1000, 10)));
            (a.join().ok(), b.join().ok())
        });
        let expected: Vec<u64> = (0..1000u64).map(|v| v * 3 + 1).collect();
        assert_eq!(both, (Some(expected.clone()), Some(expected)));
    }
}
