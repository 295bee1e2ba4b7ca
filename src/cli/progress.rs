//! Drawing apply's progress: one indicatif line per node (its current step
//! and elapsed time) on a terminal, plain timestamped lines otherwise. The
//! only indicatif user in the crate. The verbosity decides how much:
//! `-q` only failed steps, `-v` every event as a plain line (also on a
//! terminal), `-vv` also each step's host and a failed step's whole error.

use super::{verbosity, Verbosity};
use crate::apply::{Event, Outcome, Reporter};
use crate::plan::Step;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct CliReporter {
    verbosity: Verbosity,
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    start: Instant,
}

fn key(step: &Step) -> String {
    match step.node() {
        Some(n) => n.0.clone(),
        None => format!("{} ({})", step.host(), step.verb()),
    }
}

fn describe(outcome: &Outcome, whole: bool) -> String {
    match outcome {
        Outcome::Done { elapsed } => format!("done in {:.1}s", elapsed.as_secs_f64()),
        Outcome::Failed { error } if whole => format!("FAILED: {}", error.trim_end()),
        Outcome::Failed { error } => format!("FAILED: {}", error.lines().next().unwrap_or("")),
        Outcome::Skipped { because } => format!("skipped ({because})"),
    }
}

impl CliReporter {
    pub fn new() -> Self {
        let verbosity = verbosity();
        let terminal = std::io::stderr().is_terminal() && verbosity == Verbosity::Normal;
        CliReporter {
            verbosity,
            multi: terminal.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: Mutex::new(BTreeMap::new()),
            start: Instant::now(),
        }
    }

    fn plain(&self, node: &str, text: &str) {
        eprintln!(
            "[{:>6.1}s] {node}: {text}",
            self.start.elapsed().as_secs_f64()
        );
    }

    fn bar(&self, name: &str) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let mut bars = self.bars.lock().unwrap();
        Some(
            bars.entry(name.to_string())
                .or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:36} {msg} [{elapsed}]")
                            .expect("valid template"),
                    );
                    bar.set_prefix(name.to_string());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                })
                .clone(),
        )
    }

    /// Leaves the final state of every line on screen.
    pub fn finish(&self) {
        for bar in self.bars.lock().unwrap().values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }
}

impl Default for CliReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for CliReporter {
    fn event(&self, event: Event) {
        let (step, text, done) = match &event {
            Event::Started { step } => (step, format!("{} ...", step.verb()), false),
            Event::Progress { step, message } => {
                (step, format!("{}: {message}", step.verb()), false)
            }
            Event::Finished { step, outcome } => (
                step,
                format!(
                    "{} {}",
                    step.verb(),
                    describe(outcome, self.verbosity >= Verbosity::Debug)
                ),
                true,
            ),
        };
        let failed = matches!(
            event,
            Event::Finished {
                outcome: Outcome::Failed { .. },
                ..
            }
        );
        if self.verbosity == Verbosity::Quiet && !failed {
            return;
        }
        // Step messages carry remote text (Docker errors, build output):
        // control characters never reach the terminal raw.
        let text = if self.verbosity >= Verbosity::Debug {
            // Every line of it, each escaped and bounded on its own.
            text.lines()
                .take(200)
                .map(|l| crate::model::bounded(l, 2000))
                .collect::<Vec<_>>()
                .join("\n    ")
        } else {
            crate::model::bounded(&text, 2000)
        };
        let mut name = key(step);
        if self.verbosity >= Verbosity::Debug && step.node().is_some() {
            name = format!("{name} on {}", step.host());
        }
        match self.bar(&name) {
            Some(bar) => {
                bar.set_message(text);
                if done && matches!(step, Step::WaitReady { .. }) {
                    bar.finish();
                }
                if let Event::Finished {
                    outcome: Outcome::Failed { .. } | Outcome::Skipped { .. },
                    ..
                } = event
                {
                    bar.finish();
                }
            }
            None => self.plain(&name, &text),
        }
    }
}
