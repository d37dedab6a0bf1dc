//! Progress of long work (a join's documents, large binary transfers), drawn with
//! `indicatif` on a terminal only: a script or a log reading the output sees no bars.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// What the replica reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Documents the peers have (as their summaries said).
    pub docs_expected: u64,
    /// Documents here.
    pub docs_have: u64,
    /// Bytes of binary content being received.
    pub bytes_expected: u64,
    /// Of which received and verified.
    pub bytes_have: u64,
}

/// Shared between a replica and whoever draws its progress.
pub type Shared = Arc<Mutex<Progress>>;

/// Draws `state` until `cancel`, if both stdout and stderr are terminals.
pub fn draw(state: Shared, cancel: CancellationToken) {
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return;
    }
    tokio::spawn(async move {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = |template: &str| ProgressStyle::with_template(template).expect("a valid template");
        let docs = multi.add(ProgressBar::hidden());
        docs.set_style(style("{msg:>12} [{bar:30}] {pos}/{len} documents"));
        docs.set_message("receiving");
        let bytes = multi.add(ProgressBar::hidden());
        bytes.set_style(style("{msg:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})"));
        bytes.set_message("binary");
        let mut tick = tokio::time::interval(Duration::from_millis(150));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let p = *state.lock().expect("progress lock");
            show(&docs, p.docs_have, p.docs_expected);
            show(&bytes, p.bytes_have, p.bytes_expected);
        }
        docs.finish_and_clear();
        bytes.finish_and_clear();
    });
}

/// A bar is shown only while its work is under way.
fn show(bar: &ProgressBar, have: u64, expected: u64) {
    if expected > 0 && have < expected {
        if bar.is_hidden() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.set_length(expected);
        bar.set_position(have);
    } else if !bar.is_hidden() {
        bar.finish_and_clear();
        bar.set_draw_target(ProgressDrawTarget::hidden());
        bar.reset();
    }
}
