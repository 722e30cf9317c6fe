//! Handing freed heap memory back to the operating system.
//!
//! Role: a replica that served a burst (thousands of watch streams that
//! then closed, a batch of 50 MiB uploads) should shrink back to its idle
//! size, so an operator's memory graph shows what it holds now, not its
//! high-water mark. glibc's allocator keeps freed memory in its arenas:
//! measured with 10,000 watch streams (`voicehub-bench fanout`), the
//! server grew from 20 to 70 MiB and was still at 70 MiB a minute after
//! every stream had closed. mimalloc (v3) was measured too and did worse:
//! 31 MiB idle (the start-up guard is 20 MiB) and 90 MiB a minute after.
//! So the allocator stays glibc's, and every [`INTERVAL`] this task asks it
//! to release its free pages (`malloc_trim(0)`).
//!
//! Guarantees: no effect on correctness, no I/O beyond the madvise calls
//! glibc makes; on a quiet heap a trim costs microseconds. Stops on shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free pages are handed back.
pub(crate) const INTERVAL: Duration = Duration::from_secs(30);

/// Trims every `interval` until `shutdown`.
pub(crate) async fn run(interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if trim_once() {
            tracing::debug!("returned free heap pages to the operating system");
        }
    }
}

/// Asks the allocator to release its free pages; true if it released any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn trim_once() -> bool {
    // SAFETY: malloc_trim takes no pointers and only releases memory the
    // allocator itself holds as free; it is thread-safe (it takes each
    // arena's lock in turn).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim_once() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_freed_in_a_fragmented_heap_is_released() {
        // Many small blocks, then free all but every 64th: the pages
        // between the survivors are free but below the heap's top, which
        // glibc's free() never returns by itself.
        let mut blocks: Vec<Box<[u8; 200]>> = (0..50_000).map(|_| Box::new([7u8; 200])).collect();
        let survivors: Vec<Box<[u8; 200]>> = blocks
            .drain(..)
            .enumerate()
            .filter_map(|(i, b)| (i % 64 == 0).then_some(b))
            .collect();
        assert!(trim_once(), "glibc released none of ~10 MB of free pages");
        assert!(survivors.iter().all(|b| b[0] == 7));
    }
}
