//! The last errors and warnings logged, kept in memory for the admin API's health report: an
//! administrator sees what went wrong without reading the logs.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// How many are kept.
pub const KEPT: usize = 50;

static RECENT: Mutex<VecDeque<(u64, String)>> = Mutex::new(VecDeque::new());

/// A log layer that keeps the last [`KEPT`] errors and warnings.
pub struct Layer;

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level != Level::ERROR && level != Level::WARN {
            return;
        }
        let mut text = Text(format!("{}: ", level.as_str().to_ascii_lowercase()));
        event.record(&mut text);
        note(text.0);
    }
}

/// Keep `message` as a recent error.
pub fn note(message: String) {
    let mut r = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
    if r.len() == KEPT {
        r.pop_back();
    }
    r.push_front((pillarbox_os::unix_now(), message));
}

/// The recent errors and warnings, newest first, with the time each was logged.
pub fn recent() -> Vec<(u64, String)> {
    RECENT.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
}
