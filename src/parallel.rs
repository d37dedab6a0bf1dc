//! Work spread over the machine's cores, for the few places where items are independent
//! and each costs enough to be worth a thread: building or decoding many documents at
//! once (`replica`), writing a batch of files (`apply`).

/// `work` applied to each item on `threads` threads, keeping what it returns. Items vary
/// in size (files, documents), so each thread takes the next item when done rather than a
/// fixed share. The results come in no particular order.
pub fn on_every_core<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> Option<R> + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while let Some(item) = items.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        out.extend(work(item));
                    }
                    out
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    })
}
