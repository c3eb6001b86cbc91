//! What the service did minute by minute over the last hours (sessions, logins, failed logins,
//! deliveries, quota refusals), kept in memory for the admin console's graphs. Prometheus keeps
//! the long history; this is the node's own short one, so a console needs nothing else running.
//! Counts only: no names or addresses.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// How many minutes are kept (six hours).
pub const KEPT_MINUTES: usize = 360;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A POP3 connection accepted.
    Session,
    /// A login that opened a maildrop.
    Login,
    /// A login refused for a wrong credential.
    FailedLogin,
    /// A message delivered to a recipient.
    Delivery,
    /// A delivery refused because the mailbox is full.
    QuotaRefusal,
}

impl Event {
    pub const ALL: [Event; 5] =
        [Event::Session, Event::Login, Event::FailedLogin, Event::Delivery, Event::QuotaRefusal];

    /// The name a series is shown under.
    pub fn name(self) -> &'static str {
        match self {
            Event::Session => "sessions",
            Event::Login => "logins",
            Event::FailedLogin => "failed_logins",
            Event::Delivery => "deliveries",
            Event::QuotaRefusal => "quota_refusals",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counts per minute of the last [`KEPT_MINUTES`].
#[derive(Debug, Default)]
pub struct Activity {
    /// (minute since the epoch, a count per [`Event`]), oldest first, only minutes with events.
    minutes: Mutex<VecDeque<(u64, [u64; 5])>>,
}

/// A window of the counts: one value per minute for each event, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The first minute's start, in seconds since the epoch.
    pub start: u64,
    /// For each of [`Event::ALL`], a count per minute.
    pub series: Vec<(Event, Vec<u64>)>,
}

impl Activity {
    /// Count `event` now.
    pub fn count(&self, event: Event) {
        self.count_at(event, pillarbox_os::unix_now());
    }

    /// Count `event` at `secs` (seconds since the epoch). Minutes only ever move forward: an
    /// event stamped before the newest minute kept (a clock set back) counts in that minute.
    pub fn count_at(&self, event: Event, secs: u64) {
        let minute = secs / 60;
        let mut m = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        match m.back_mut() {
            Some((last, counts)) if *last >= minute => counts[event.index()] += 1,
            _ => {
                let mut counts = [0; 5];
                counts[event.index()] = 1;
                m.push_back((minute, counts));
                while m.front().is_some_and(|(first, _)| first + KEPT_MINUTES as u64 <= minute) {
                    m.pop_front();
                }
            }
        }
    }

    /// The last `minutes` minutes up to and including the one of `now` (at most
    /// [`KEPT_MINUTES`]), every minute present.
    pub fn window(&self, minutes: usize, now: u64) -> Window {
        let minutes = minutes.clamp(1, KEPT_MINUTES) as u64;
        let last = now / 60;
        let first = last + 1 - minutes.min(last + 1);
        let len = (last - first + 1) as usize;
        let mut series: Vec<(Event, Vec<u64>)> = Event::ALL.iter().map(|&e| (e, vec![0; len])).collect();
        let m = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        for (minute, counts) in m.iter().filter(|(at, _)| (first..=last).contains(at)) {
            let i = (minute - first) as usize;
            for (e, values) in &mut series {
                values[i] = counts[e.index()];
            }
        }
        Window { start: first * 60, series }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(w: &Window, e: Event) -> Vec<u64> {
        w.series.iter().find(|(x, _)| *x == e).expect("series").1.clone()
    }

    #[test]
    fn counts_land_in_their_minute_and_empty_minutes_are_zero() {
        let a = Activity::default();
        let t = 1_000_000 * 60;
        a.count_at(Event::FailedLogin, t + 5);
        a.count_at(Event::FailedLogin, t + 59);
        a.count_at(Event::Login, t + 61);
        a.count_at(Event::Delivery, t + 3 * 60);
        let w = a.window(5, t + 3 * 60 + 30);
        assert_eq!(w.start, t - 60);
        assert_eq!(of(&w, Event::FailedLogin), [0, 2, 0, 0, 0]);
        assert_eq!(of(&w, Event::Login), [0, 0, 1, 0, 0]);
        assert_eq!(of(&w, Event::Delivery), [0, 0, 0, 0, 1]);
        assert_eq!(of(&w, Event::QuotaRefusal), [0; 5]);
    }

    #[test]
    fn only_the_kept_hours_are_remembered() {
        let a = Activity::default();
        let t = 2_000_000 * 60;
        a.count_at(Event::Session, t);
        a.count_at(Event::Session, t + (KEPT_MINUTES as u64 - 1) * 60);
        assert_eq!(a.minutes.lock().expect("not poisoned").len(), 2);
        a.count_at(Event::Session, t + KEPT_MINUTES as u64 * 60);
        assert_eq!(a.minutes.lock().expect("not poisoned").len(), 2, "the oldest minute is dropped");
        let w = a.window(100_000, t + KEPT_MINUTES as u64 * 60);
        assert_eq!(of(&w, Event::Session).len(), KEPT_MINUTES);
        assert_eq!(of(&w, Event::Session).iter().sum::<u64>(), 2);
    }

    #[test]
    fn a_clock_set_back_counts_in_the_newest_minute() {
        let a = Activity::default();
        let t = 3_000_000 * 60;
        a.count_at(Event::Delivery, t + 120);
        a.count_at(Event::Delivery, t);
        let w = a.window(3, t + 120);
        assert_eq!(of(&w, Event::Delivery), [0, 0, 2]);
    }

    #[test]
    fn a_window_near_the_epoch_does_not_underflow() {
        let a = Activity::default();
        a.count_at(Event::Login, 30);
        let w = a.window(10, 30);
        assert_eq!((w.start, of(&w, Event::Login)), (0, vec![1]));
    }
}
