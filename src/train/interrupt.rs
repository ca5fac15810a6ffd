//! Ctrl-C (SIGINT) and SIGTERM while training: the first one asks the run
//! to stop after the current step, with a checkpoint; a second one ends the
//! process at once (exit status 128 + signal), as a user pressing Ctrl-C
//! twice expects. The handlers only set flags (and write one fixed line to
//! stderr), which is all a signal handler may safely do; the run loop looks
//! at the flags between steps.

use anyhow::Result;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::{flag, low_level};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Set by the first SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// Which signal set [`STOP`].
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

const NOTICE: &[u8] = b"\nstopping after the current step to write a checkpoint \
(press Ctrl-C again to quit at once, losing the steps since the last checkpoint)\n";

/// Installs the handlers (once per process).
pub fn install() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            for signal in [SIGINT, SIGTERM] {
                // Order matters: the exit runs only when an earlier signal
                // already set STOP; the notice only on the first one.
                flag::register_conditional_shutdown(signal, 128 + signal, &STOP)
                    .and_then(|_| {
                        // SAFETY: the action only reads an atomic and calls
                        // write(2), both async-signal-safe.
                        unsafe {
                            low_level::register(signal, move || {
                                if !STOP.load(Ordering::SeqCst) {
                                    SIGNAL.store(signal as usize, Ordering::SeqCst);
                                    let _ = libc::write(2, NOTICE.as_ptr().cast(), NOTICE.len());
                                }
                            })
                        }
                    })
                    .and_then(|_| flag::register(signal, &STOP))
                    .map_err(|e| format!("cannot install the handler of signal {signal}: {e}"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    STOP.load(Ordering::SeqCst)
        .then(|| SIGNAL.load(Ordering::SeqCst) as i32)
}

/// A run stopped by a signal: the error `dyntie train` ends with. Its exit
/// status is `128 + signal` (130 for Ctrl-C), as a shell reports a process
/// killed by that signal.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub dir: PathBuf,
    /// The step whose checkpoint was written, or why none could be.
    pub saved: std::result::Result<u64, String>,
}

impl Interrupted {
    pub fn exit_status(&self) -> i32 {
        128 + self.signal
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.signal == SIGINT {
            "Ctrl-C (SIGINT)"
        } else {
            "SIGTERM"
        };
        match &self.saved {
            Ok(step) => write!(
                f,
                "stopped by {name} at step {step}; the checkpoint of step {step} is written: \
                 continue with dyntie train --resume {}",
                self.dir.display()
            ),
            Err(why) => write!(
                f,
                "stopped by {name}, but the checkpoint could not be written ({why}); the \
                 previous checkpoint, if any, is intact: dyntie train --resume {}",
                self.dir.display()
            ),
        }
    }
}

impl std::error::Error for Interrupted {}
