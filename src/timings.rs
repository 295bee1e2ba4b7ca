//! Where an operation's time goes: named spans (a host, or none for the
//! whole operation) measured from the process's start. Recording is off
//! unless `-vv` turns it on; the CLI prints the spans on stderr at the end,
//! in start order. They profile `plan` and `apply` on real hosts (the
//! benchmark's "before and after"), and tell an operator which host is slow.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static SPANS: Mutex<Vec<Span>> = Mutex::new(Vec::new());

/// One measured piece of work.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The host it concerned (empty: the operation as a whole).
    pub host: String,
    pub what: &'static str,
    pub start: Duration,
    pub end: Duration,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Starts recording (the clock starts at the first call to this or to [`now`]).
pub fn enable() {
    origin();
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are being recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Time since the process's clock started.
pub fn now() -> Duration {
    origin().elapsed()
}

/// Records a span that started at `start` (from [`now`]) and ends now.
pub fn record(host: &str, what: &'static str, start: Duration) {
    if !enabled() {
        return;
    }
    let span = Span {
        host: host.to_string(),
        what,
        start,
        end: now(),
    };
    SPANS.lock().unwrap_or_else(|e| e.into_inner()).push(span);
}

/// Runs `fut`, recording how long it took under `what` for `host`.
pub async fn span<F: Future>(host: &str, what: &'static str, fut: F) -> F::Output {
    if !enabled() {
        return fut.await;
    }
    let start = now();
    let out = fut.await;
    record(host, what, start);
    out
}

/// Every span recorded so far, in start order, and forgets them.
pub fn take() -> Vec<Span> {
    let mut spans = std::mem::take(&mut *SPANS.lock().unwrap_or_else(|e| e.into_inner()));
    spans.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(a.end.cmp(&b.end))
            .then(a.host.cmp(&b.host))
    });
    spans
}

/// The spans as lines for the operator: start and end in seconds since
/// seedcore started, the duration, the host and what ran. Host names are
/// from the configuration (validated), so they are printed as they are.
pub fn render(spans: &[Span]) -> Vec<String> {
    let width = spans.iter().map(|s| s.host.len()).max().unwrap_or(0).max(1);
    spans
        .iter()
        .map(|s| {
            format!(
                "{:>7.3}s -{:>7.3}s {:>7.1}ms  {:<width$}  {}",
                s.start.as_secs_f64(),
                s.end.as_secs_f64(),
                (s.end.saturating_sub(s.start)).as_secs_f64() * 1000.0,
                if s.host.is_empty() { "-" } else { &s.host },
                s.what,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_render_in_a_column_per_field() {
        let spans = vec![
            Span {
                host: String::new(),
                what: "configuration loaded",
                start: Duration::from_millis(0),
                end: Duration::from_millis(3),
            },
            Span {
                host: "10.0.0.5".into(),
                what: "ssh handshake",
                start: Duration::from_millis(4),
                end: Duration::from_millis(190),
            },
        ];
        assert_eq!(
            render(&spans),
            vec![
                "  0.000s -  0.003s     3.0ms  -         configuration loaded",
                "  0.004s -  0.190s   186.0ms  10.0.0.5  ssh handshake",
            ]
        );
    }
}
