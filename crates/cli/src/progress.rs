//! Progress bars (indicatif) for `ferry apply --wait` on a terminal: the latest revision's
//! ready replicas of those desired, with the rollout's words, and one bar per replica whose
//! model is downloading (from the server's `fetching X of Y MB` lines). Not a terminal: none,
//! and the rollout is followed line by line instead.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use ferry_api::InferenceService;
use ferry_core::status::RolloutProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct RolloutBars {
    multi: MultiProgress,
    rollout: ProgressBar,
    fetches: Mutex<BTreeMap<String, ProgressBar>>,
}

impl RolloutBars {
    /// Bars on stderr when it is a terminal (`FERRY_PROGRESS=always` draws them anyway).
    pub fn new(namespace: &str, name: &str) -> Option<RolloutBars> {
        let forced = std::env::var("FERRY_PROGRESS").is_ok_and(|v| v == "always");
        if !forced && !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let rollout = multi.add(ProgressBar::new(1));
        rollout.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ready  {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        rollout.set_prefix(format!("{namespace}/{name}"));
        Some(RolloutBars {
            multi,
            rollout,
            fetches: Mutex::new(BTreeMap::new()),
        })
    }

    /// The latest revision's ready replicas of those desired, and where the rollout is.
    pub fn rollout(&self, isvc: &InferenceService, progress: &RolloutProgress) {
        let status = isvc.status.clone().unwrap_or_default();
        let latest = status.latest_revision.clone().unwrap_or_default();
        let ready = status
            .revisions
            .iter()
            .find(|r| r.name == latest)
            .map_or(0, |r| r.ready_replicas);
        self.rollout
            .set_length(u64::from(isvc.spec.predictor.replicas().max(1)));
        self.rollout.set_position(u64::from(ready));
        self.rollout.set_message(progress.message.clone());
    }

    /// A replica's download, from its `fetching X of Y MB (P%, R MB/s)` log line.
    pub fn fetch(&self, replica: &str, line: &str) {
        let Some((done, total)) = fetched_mb(line) else {
            return;
        };
        let mut fetches = self.fetches.lock().expect("bars poisoned");
        let bar = fetches.entry(replica.to_string()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template("  {prefix} [{bar:30}] {msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{replica} model"));
            bar
        });
        bar.set_length((total * 10.0) as u64);
        bar.set_position((done * 10.0) as u64);
        bar.set_message(format!("{done:.1} of {total:.1} MB"));
    }

    pub fn finish(&self, message: &str) {
        for bar in self.fetches.lock().expect("bars poisoned").values() {
            bar.finish();
        }
        self.rollout.finish_with_message(message.to_string());
    }

    pub fn abandon(&self, reason: &str) {
        self.rollout.abandon_with_message(reason.to_string());
    }
}

/// (done, total) in MB from `... fetching 12.5 of 90.9 MB (13%, 40 MB/s)`.
fn fetched_mb(line: &str) -> Option<(f64, f64)> {
    let text = line.split("fetching ").nth(1)?;
    let mut words = text.split_whitespace();
    let done = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let total = words.next()?.parse().ok()?;
    Some((done, total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fetch_line_gives_its_megabytes() {
        assert_eq!(
            super::fetched_mb(
                "INFO ferry_storage: fetching 12.5 of 90.9 MB (13%, 40 MB/s) uri=s3://m"
            ),
            Some((12.5, 90.9))
        );
        assert_eq!(super::fetched_mb("loaded"), None);
    }
}
