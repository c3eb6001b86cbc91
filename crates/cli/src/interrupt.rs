//! Ctrl-C at an interactive prompt: the terminal is put back as it was (a password prompt turns
//! echo off) and nothing half-saved is left behind. [`Interrupts`] covers a whole dialogue
//! (`account add`); [`prompt_password`] one password prompt of any command.
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in the calling thread, which every thread started after
//! it inherits, and taken by one thread of their own with `sigwait`: no signal handler, so the
//! code that runs on a signal is ordinary code. Child processes start with no signal blocked
//! (the standard library resets the mask), so a password command can still be interrupted.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{SetArg, Termios, tcgetattr, tcsetattr};

/// From then on, an interrupt restores the terminal and ends the process with 128 + the
/// signal's number, saying `message` first.
pub struct Interrupts {
    state: Arc<State>,
}

struct State {
    message: &'static str,
    /// The terminal's settings at the start; the lock is held while saving, and an interrupt
    /// waits for it.
    terminal: Mutex<Option<Termios>>,
}

impl State {
    fn end(&self, signal: Signal) -> ! {
        // Wait for a save in progress to finish: it is never cut in half.
        let terminal = self.terminal.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = &*terminal {
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
        eprintln!("\n{}", self.message);
        std::process::exit(128 + signal as i32);
    }
}

impl Interrupts {
    /// Call before any other thread is started.
    pub fn install(message: &'static str) -> std::io::Result<Self> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block().map_err(std::io::Error::from)?;
        let state = Arc::new(State { message, terminal: Mutex::new(tcgetattr(std::io::stdin()).ok()) });
        let on_signal = Arc::clone(&state);
        std::thread::Builder::new().name("interrupts".into()).spawn(move || {
            if let Ok(signal) = set.wait() {
                on_signal.end(signal);
            }
        })?;
        Ok(Self { state })
    }

    /// What a prompt that reads the terminal raw (and so sees Ctrl-C as a character) calls.
    pub fn interrupted(&self) -> ! {
        self.state.end(Signal::SIGINT)
    }

    /// Hold off interrupts until the guard is dropped (they are acted on then).
    pub fn hold(&self) -> MutexGuard<'_, Option<Termios>> {
        self.state.terminal.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A password typed at the terminal without echo. rpassword reads the terminal raw, sees Ctrl-C
/// as a character and raises SIGINT in this thread while the terminal is still raw: blocked here,
/// the signal waits, rpassword puts the terminal back as it returns, and the command ends with
/// 130 (the terminal echoing again, nothing done).
pub fn prompt_password(prompt: impl std::fmt::Display) -> std::io::Result<String> {
    let mut interrupt = SigSet::empty();
    interrupt.add(Signal::SIGINT);
    let before = interrupt.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK).map_err(std::io::Error::from)?;
    let answer = rpassword::prompt_password(prompt.to_string());
    if matches!(&answer, Err(e) if e.kind() == std::io::ErrorKind::Interrupted) {
        eprintln!("\ninterrupted; nothing was changed");
        std::process::exit(130);
    }
    let _ = before.thread_set_mask();
    answer
}
