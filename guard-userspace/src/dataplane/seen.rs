//! The seen filter's userspace side (`guard_common::seen`): the two halves of `GUARD_SEEN`
//! mapped into memory, bits set with atomic ORs (as the program sets them), and the rebuild
//! that drops the sources the tracker, `BANS` and `KNOWN` no longer hold.
//!
//! The invariant the program relies on: a source in any of the three maps has its bits set in
//! the half it reads. Everyone sets a source's bits in both halves before inserting it. A
//! rebuild clears the half not in use, waits out the program runs that may have set bits in it
//! just before (`RUN_GRACE`), so that their inserts are done, then sets the bits of every key
//! the three maps hold and only then makes that half the one in use. A key inserted during the
//! walk has set its own bits after the clearing.
use std::{
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use aya::maps::MapData;
use guard_common::{FLAG_SEEN_FILTER, FLAG_SEEN_HALF, SourceKey, seen};

/// Program runs last microseconds (XDP runs with preemption off): this long after the
/// clearing, every run that set a bit before it has made its insert.
const RUN_GRACE: Duration = Duration::from_millis(5);

/// `GUARD_SEEN`, mapped.
pub struct SeenFilter {
    words: NonNull<AtomicU64>,
    len: usize,
    /// The half the program reads once `built`.
    half: u32,
    /// A half has been rebuilt from the maps since load: the program may trust the filter.
    built: bool,
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics; it lives as long as the
// struct (unmapped on drop).
unsafe impl Send for SeenFilter {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for SeenFilter {}

impl SeenFilter {
    /// Maps the array's memory (the map was created with `BPF_F_MMAPABLE`).
    ///
    /// # Errors
    /// When the kernel refuses the mapping (a pinned map from a build without the flag).
    pub fn new(map: MapData) -> std::io::Result<Self> {
        let len = capacity_words();
        let bytes = len * std::mem::size_of::<u64>();
        // SAFETY: a fresh shared mapping of the map's fd, of exactly the array's size; the
        // kernel keeps the map alive while the mapping exists.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            words: NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?,
            len,
            half: 0,
            built: false,
            _map: map,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` words mapped read-write at `words` for the struct's lifetime.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.len) }
    }

    /// The `Config::flags` bits that tell the program which half to read, if any.
    pub fn flags(&self) -> u32 {
        match (self.built, self.half) {
            (false, _) => 0,
            (true, 0) => FLAG_SEEN_FILTER,
            (true, _) => FLAG_SEEN_FILTER | FLAG_SEEN_HALF,
        }
    }

    /// Sets `key`'s bits in both halves: before the key goes into the tracker, `BANS` or
    /// `KNOWN`.
    pub fn mark(&self, key: &SourceKey) {
        let (word, bits) = seen::slot(key);
        let w = self.words();
        for half in [0, seen::WORDS] {
            w[(half + word) as usize].fetch_or(bits, Ordering::Relaxed);
        }
    }

    /// May `key` be in one of the three maps, as the program would answer now?
    pub fn maybe(&self, key: &SourceKey) -> bool {
        if !self.built {
            return true;
        }
        let (word, bits) = seen::slot(key);
        let w = self.words()[(self.half * seen::WORDS + word) as usize].load(Ordering::Relaxed);
        w & bits == bits
    }

    /// Rebuilds the half not in use from `keys` (every key the three maps hold, walked after
    /// this call has cleared the half: `keys` is called once, after the grace) and returns
    /// the flags that make it the one in use. The caller writes them to the program's config,
    /// then calls `flipped`.
    pub fn rebuild<I: IntoIterator<Item = SourceKey>>(&self, keys: impl FnOnce() -> I) -> u32 {
        let next = if self.built { self.half ^ 1 } else { 0 };
        let base = (next * seen::WORDS) as usize;
        let w = self.words();
        for word in &w[base..base + seen::WORDS as usize] {
            word.store(0, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        std::thread::sleep(RUN_GRACE);
        for key in keys() {
            let (word, bits) = seen::slot(&key);
            w[base + word as usize].fetch_or(bits, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        match next {
            0 => FLAG_SEEN_FILTER,
            _ => FLAG_SEEN_FILTER | FLAG_SEEN_HALF,
        }
    }

    /// Records that the config naming `flags`' half is in force.
    pub fn flipped(&mut self, flags: u32) {
        self.built = flags & FLAG_SEEN_FILTER != 0;
        self.half = u32::from(flags & FLAG_SEEN_HALF != 0);
    }

    /// Bits set in the half in use, of all its bits: how full the filter is (a half at a
    /// quarter already answers "maybe" for about 1.5% of never-seen sources).
    pub fn fill(&self) -> f64 {
        let base = (self.half * seen::WORDS) as usize;
        let ones: u64 = self.words()[base..base + seen::WORDS as usize]
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        ones as f64 / (f64::from(seen::WORDS) * 64.0)
    }
}

impl Drop for SeenFilter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of this size, unmapped once.
        unsafe {
            libc::munmap(
                self.words.as_ptr().cast(),
                self.len * std::mem::size_of::<u64>(),
            )
        };
    }
}

fn capacity_words() -> usize {
    guard_common::capacity::SEEN as usize
}

#[cfg(test)]
mod tests {
    use guard_common::{SourceKey, seen, source_key_v4};

    /// Distinct keys rarely share a word, and a key's bits are in one word.
    #[test]
    fn slots_spread_keys_over_the_words() {
        let mut words = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let key = source_key_v4(i.to_be_bytes(), 32);
            let (w, bits) = seen::slot(&key);
            assert!(w < seen::WORDS);
            assert!((1..=3).contains(&bits.count_ones()), "{bits:#x}");
            words.insert(w);
        }
        // 10,000 keys over 131,072 words: about 9,630 distinct words expected.
        assert!(words.len() > 9_400, "{} distinct words", words.len());
        assert_ne!(
            seen::slot(&SourceKey::default()),
            seen::slot(&source_key_v4([0, 0, 0, 1], 32))
        );
    }
}
