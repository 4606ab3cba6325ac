//! What a model costs in host memory, measured on this process while it loads and warms up:
//! the resident memory it added (`VmRSS` after − before) and the peak above the start
//! (`VmHWM`, reset first through `/proc/self/clear_refs`). Loads are measured one at a time
//! (the repository serializes them), so another load's memory is never counted; requests
//! served meanwhile can add noise, which is why a pool planner corrects its estimates with
//! these figures instead of trusting a file size.
//!
//! Where the binary counts its heap (it installs a counting global allocator and hands its
//! counters to [`count_heap_with`], as `ferry` does), the resident figure is the heap the load
//! added and kept on the loading thread instead: exact, also while other threads serve
//! requests (their buffers come and go in the process's count), and true also when the load
//! reuses memory that an evicted model freed (the allocator keeps freed pages, so `VmRSS`
//! would not grow and a pool server reloading models would read them as free). A backend's
//! own C allocations (ONNX Runtime's arena, its threads) are not on Rust's heap: for such a
//! load (`native`) the larger of the heap and the `VmRSS` counts.
//!
//! Linux only (procfs); elsewhere nothing is measured.

/// Host memory a model took, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Resident memory added and still held once the model is ready.
    pub resident_bytes: u64,
    /// The most resident memory above the start while it loaded and warmed up.
    pub peak_bytes: u64,
}

/// Held while a measurement runs: one at a time in this process.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The binary's per-thread heap counter: runs the work it is given and returns what that work
/// allocated on the calling thread, net (allocated less freed) and at its most.
pub type HeapCounter = fn(&mut dyn FnMut()) -> (i64, u64);

static HEAP: std::sync::OnceLock<HeapCounter> = std::sync::OnceLock::new();

/// Measure models by the heap they keep, counted by the binary's allocator on the loading
/// thread. Set once per process; a second call is ignored.
pub fn count_heap_with(counter: HeapCounter) {
    let _ = HEAP.set(counter);
}

/// Runs `work`, with the heap it allocated on this thread (net, most) where the binary counts.
fn on_heap<T>(work: impl FnOnce() -> T) -> (T, Option<(u64, u64)>) {
    let mut work = Some(work);
    let mut out = None;
    let counted = {
        let mut run = || out = work.take().map(|w| w());
        match HEAP.get() {
            Some(counter) => Some(counter(&mut run)),
            None => {
                run();
                None
            }
        }
    };
    let out = out.expect("the work ran once");
    (
        out,
        counted.map(|(net, most)| (u64::try_from(net).unwrap_or(0), most)),
    )
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn status() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Run `work`, measuring what it adds to this process's memory (`None` where procfs cannot
/// tell: not Linux, or the peak cannot be reset).
/// `native`: the work allocates outside Rust's heap too (a C library's allocator).
pub fn measure<T>(native: bool, work: impl FnOnce() -> T) -> (T, Option<Footprint>) {
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let before = status();
    // "5" resets the peak resident set size to the current one (proc(5)).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (out, heap) = on_heap(work);
    let footprint = match (before, status()) {
        (Some((start, _)), Some((end, peak))) if reset => {
            let rss = end.saturating_sub(start);
            let resident = match heap {
                Some((kept, _)) if native => kept.max(rss),
                Some((kept, _)) => kept,
                None => rss,
            };
            let heap_peak = heap.map_or(0, |(_, most)| most);
            Some(Footprint {
                resident_bytes: resident,
                peak_bytes: peak.saturating_sub(start).max(heap_peak).max(resident),
            })
        }
        _ => heap.map(|(kept, most)| Footprint {
            resident_bytes: kept,
            peak_bytes: most.max(kept),
        }),
    };
    (out, footprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_allocation_is_resident_and_a_freed_one_only_peaks() {
        const MIB: u64 = 1 << 20;
        let (kept, footprint) = measure(false, || {
            let transient = vec![1u8; 64 * MIB as usize];
            std::hint::black_box(&transient);
            drop(transient);
            let kept = vec![1u8; 32 * MIB as usize];
            std::hint::black_box(kept)
        });
        let Some(footprint) = footprint else {
            // Not Linux: nothing to check.
            return;
        };
        assert!(kept.len() as u64 == 32 * MIB);
        // The kept 32 MiB is resident (touched pages); the 64 MiB that was freed shows in the
        // peak only (large allocations are mapped and unmapped, not kept by the allocator).
        // (Other tests of this binary run meanwhile: lower bounds and an ordering only.)
        assert!(footprint.resident_bytes >= 30 * MIB, "{footprint:?}");
        assert!(footprint.peak_bytes >= 62 * MIB, "{footprint:?}");
        assert!(
            footprint.resident_bytes + 16 * MIB < footprint.peak_bytes,
            "{footprint:?}"
        );
    }
}
