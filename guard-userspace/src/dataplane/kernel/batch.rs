//! Whole-map reads of the hash maps (the source tracker, `BANS`, `KNOWN`) in batches of
//! [`BATCH`] entries per bpf(2) call (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): a full tracker of
//! 131,072 entries is 33 calls, not the 262,144 of a key-by-key walk, which also restarts from
//! the first key whenever the LRU evicts the key it stands on and then counts entries twice.
//! The kernel's cursor is a hash bucket, so a batch walk sees each key at most once; the keys
//! are deduplicated all the same, and the key-by-key walk stays as the fallback.
//!
//! Hand-written here: aya 0.14 has no batch operations.
use std::{
    collections::HashMap,
    hash::Hash,
    io,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Pod,
    maps::{IterableMap, MapData},
};

/// `BPF_MAP_LOOKUP_BATCH` from `<linux/bpf.h>`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call: 4,096 of the tracker's 64-byte entries is 256 KiB of buffer.
pub(crate) const BATCH: usize = 4096;

/// Reads every entry of a hash map, deduplicated by key, counting the bpf(2) calls it made
/// in `calls`. `None` when this kernel has no batch lookups for the map (the caller walks).
pub(crate) fn lookup_all<K, V>(map: &MapData, calls: &AtomicU64) -> io::Result<Option<Vec<(K, V)>>>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys: Vec<K> = Vec::with_capacity(BATCH);
    let mut values: Vec<V> = Vec::with_capacity(BATCH);
    // The kernel's cursor (a bucket index for hash maps): opaque, at most 8 bytes.
    let mut in_batch = 0u64;
    let mut out_batch = 0u64;
    let mut first = true;
    let mut out: HashMap<K, V> = HashMap::new();
    loop {
        // union bpf_attr for the batch commands: in_batch, out_batch, keys, values (u64
        // each), count and map_fd (u32 each), elem_flags, flags. The rest stays zero.
        let mut attr = [0u64; 16];
        attr[0] = if first { 0 } else { &raw mut in_batch as u64 };
        attr[1] = &raw mut out_batch as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = BATCH as u64 | (fd as u32 as u64) << 32;
        calls.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `attr` is a valid block of the size passed; the key and value buffers hold
        // BATCH elements of the map's key and value sizes (the callers' K and V, checked
        // against the map at load), and the cursors are 8 bytes each.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let got = ((attr[4] & 0xffff_ffff) as usize).min(BATCH);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                // SAFETY: the kernel wrote `got` keys and values into the buffers.
                unsafe {
                    keys.set_len(got);
                    values.set_len(got);
                }
                out.extend(keys.drain(..).zip(values.drain(..)));
                if err.is_some() {
                    // ENOENT: the walk is over (with the last entries, if `got` > 0).
                    return Ok(Some(out.into_iter().collect()));
                }
            }
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if first => return Ok(None),
            Some(_) => return Err(err.expect("an error")),
        }
        in_batch = out_batch;
        first = false;
    }
}

/// The kernel's `ENOTSUPP` (524): what bpf(2) returns for an operation a map type lacks.
const ENOTSUPP: i32 = 524;

/// A whole hash map, by batches where the kernel has them, else key by key; either way each
/// key once. A key vanishing mid-walk (the LRU evicting it, the program deleting it) is
/// skipped.
///
/// # Errors
/// When a batch call fails for another reason than the end of the map.
pub(crate) fn read_all<K, V>(
    map: &aya::maps::HashMap<MapData, K, V>,
    calls: &AtomicU64,
) -> Result<Vec<(K, V)>, aya::maps::MapError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    match lookup_all::<K, V>(map.map(), calls) {
        Ok(Some(all)) => Ok(all),
        Ok(None) => {
            let mut out: HashMap<K, V> = HashMap::new();
            for (k, v) in map.iter().filter_map(Result::ok) {
                out.insert(k, v);
            }
            // aya's walk: a get_next_key and a lookup per entry, and the final get_next_key.
            calls.fetch_add(2 * out.len() as u64 + 1, Ordering::Relaxed);
            Ok(out.into_iter().collect())
        }
        Err(io_error) => Err(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        })),
    }
}
