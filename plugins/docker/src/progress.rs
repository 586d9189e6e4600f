//! Progress for the slow steps of a launch (building the sidecar image,
//! pulling or loading the agent image). Spinners go to stderr and draw
//! nothing when stderr is not a terminal, so scripts and CI see no noise.

use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// One set of bars per process: the agent and sidecar images are prepared
/// at the same time, and separate bars would overwrite each other.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// A spinner that clears itself when dropped, on success and on error alike.
#[derive(Debug)]
pub(crate) struct Spinner(ProgressBar);

impl Spinner {
    /// Starts a spinner with `message`.
    pub(crate) fn start(message: impl Into<String>) -> Self {
        let bar = bars().add(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(bar)
    }

    /// Replaces the message (a pull's per-layer status).
    pub(crate) fn say(&self, message: impl Into<String>) {
        self.0.set_message(message.into());
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
