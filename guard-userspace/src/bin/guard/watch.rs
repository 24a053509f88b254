//! `--watch` for `guard stats` and `guard top`: the view redrawn in place like top(1) until
//! `q` or Ctrl-C, or, when stdout is not a terminal, the frames printed one after another.
use std::{
    io::{self, IsTerminal, Read, Write},
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

/// Clear the screen and go home: each frame replaces the last.
const REDRAW: &str = "\x1b[H\x1b[2J";

/// The terminal's settings before we changed them, put back on drop (also on error).
struct Keys {
    saved: Option<Termios>,
}

impl Keys {
    /// Key presses from stdin without Enter or echo, Ctrl-C included as a key (so that the
    /// terminal is put back before we exit), when stdin is a terminal; `rx` gets one `()`
    /// for `q`, `Q` or Ctrl-C.
    fn start(quit: mpsc::Sender<()>) -> Self {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Self { saved: None };
        }
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
        if termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return Self { saved: None };
        }
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while let Ok(1) = io::stdin().read(&mut byte) {
                if matches!(byte[0], b'q' | b'Q' | 0x03) {
                    let _ = quit.send(());
                    return;
                }
            }
        });
        Self { saved: Some(saved) }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

/// Shows `frame(n)` (n from 1) every `every` (or as fast as `frame` returns, if it takes
/// longer, as `guard top` does while it measures) until the operator quits. On a terminal
/// each frame replaces the last; otherwise frames follow one another, a blank line apart,
/// until Ctrl-C or until the reader goes away.
///
/// # Errors
///
/// The first error of `frame`, or of writing to stdout.
pub fn watch(
    every: Duration,
    mut frame: impl FnMut(u64) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let tty = io::stdout().is_terminal();
    let (quit_tx, quit) = mpsc::channel();
    // Ctrl-C as a signal too (stdin no terminal, or the key came before the terminal was
    // set): a quit like `q`, so the terminal is put back and the exit status is 0.
    let on_signal = quit_tx.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            && rt.block_on(tokio::signal::ctrl_c()).is_ok()
        {
            let _ = on_signal.send(());
        }
    });
    let keys = Keys::start(quit_tx);
    let mut out = io::stdout().lock();
    for n in 1u64.. {
        let started = Instant::now();
        let text = frame(n)?;
        let written = if tty {
            write!(out, "{REDRAW}{text}")
        } else if n == 1 {
            write!(out, "{text}")
        } else {
            write!(out, "\n{text}")
        }
        .and_then(|()| out.flush());
        match written {
            Ok(()) => {}
            // The reader (a pipe into head, say) is gone: done.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e.into()),
        }
        let left = every.saturating_sub(started.elapsed());
        match quit.recv_timeout(left) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    drop(keys);
    if tty {
        let _ = writeln!(out);
    }
    Ok(())
}
