//! What keeps the plugin's one promise to its runtime: exactly one JSON document on stdout
//! and an exit status that matches it, within bounded time. The result, the watchdog that
//! answers when something blocks past its deadline (a runtime that never closes stdin,
//! an agent socket whose backlog is full, an agent that drips its answer), and the panic
//! hook all print through [`emit`], and only the first of them prints.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rscni_types::error::Error;
use rscni_types::types::ErrorResult;
use rscni_types::version::SpecVersion;

/// The code of the last-resort answer to a panic (a plugin-specific code).
pub const PANIC_CODE: u32 = 999;

/// Whether something has been printed.
static EMITTED: Mutex<bool> = Mutex::new(false);
/// The version errors are reported under: the configuration's, once stdin is read.
static ERROR_VERSION: OnceLock<SpecVersion> = OnceLock::new();

/// Records the configuration's `cniVersion` for errors (the current version when it has
/// none or it does not parse). Only the first call counts.
pub fn set_error_version(declared: Option<&str>) {
    let v = declared
        .and_then(|d| d.parse::<SpecVersion>().ok())
        .unwrap_or(SpecVersion::CURRENT);
    let _ = ERROR_VERSION.set(v);
}

/// The spec's error JSON for `e`.
pub fn error_json(e: &Error) -> String {
    let v = ERROR_VERSION.get().copied().unwrap_or(SpecVersion::CURRENT);
    serde_json::to_string(&ErrorResult::new(v, e)).unwrap_or_else(|_| {
        format!(
            r#"{{"cniVersion":"{v}","code":{},"msg":"cannot encode the error","details":""}}"#,
            u32::from(e)
        )
    })
}

/// Prints `text` on stdout if nothing was printed yet; returns whether it did. A failed
/// write is reported on stderr (the runtime then sees the exit status alone).
pub fn emit(text: &str) -> bool {
    let mut done = EMITTED.lock().unwrap_or_else(PoisonError::into_inner);
    if *done {
        return false;
    }
    *done = true;
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        let _ = writeln!(io::stderr(), "weft-cni: cannot write to stdout: {e}");
    }
    true
}

/// Replaces the default panic message with error JSON (code 999) and exits 1.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let e = panic_error(info);
        // try_lock: a panic while this thread holds the lock would otherwise deadlock.
        if let Ok(mut done) = EMITTED.try_lock()
            && !*done
        {
            *done = true;
            let mut out = io::stdout().lock();
            let _ = out.write_all(error_json(&e).as_bytes());
            let _ = out.flush();
        }
        std::process::exit(1);
    }));
}

/// The error a panic is reported as.
pub fn panic_error(info: &std::panic::PanicHookInfo<'_>) -> Error {
    let what = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let at = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    Error::Custom(
        PANIC_CODE,
        "weft-cni failed unexpectedly".into(),
        format!("internal error{at}: {what}"),
    )
}

/// The armed deadline and the error it answers, and what wakes the thread on a change.
type Armed = (Mutex<Option<(Instant, Error)>>, Condvar);

/// A deadline on whatever the plugin is doing: when it passes, the armed error is printed
/// and the process exits 1.
#[derive(Debug, Clone)]
pub struct Watchdog {
    inner: Arc<Armed>,
}

impl Watchdog {
    /// Starts the watchdog thread, disarmed.
    pub fn start() -> Watchdog {
        let w = Watchdog {
            inner: Arc::new((Mutex::new(None), Condvar::new())),
        };
        let inner = Arc::clone(&w.inner);
        // If the thread cannot be spawned there is no watchdog; every call still has
        // its own timeout.
        let _ = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&inner));
        w
    }

    /// From now on, `error` is the answer if `within` passes first.
    pub fn arm(&self, within: Duration, error: Error) {
        let (m, cv) = &*self.inner;
        *m.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now() + within, error));
        cv.notify_all();
    }

    /// Stops the deadline.
    pub fn disarm(&self) {
        let (m, cv) = &*self.inner;
        *m.lock().unwrap_or_else(PoisonError::into_inner) = None;
        cv.notify_all();
    }
}

fn watch(inner: &Armed) {
    let (m, cv) = inner;
    let mut armed = m.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let wait = match &*armed {
            None => Duration::from_secs(3600),
            Some((at, e)) => match at.checked_duration_since(Instant::now()) {
                Some(d) if !d.is_zero() => d,
                _ => {
                    let json = error_json(e);
                    drop(armed);
                    if emit(&json) {
                        std::process::exit(1);
                    }
                    return;
                }
            },
        };
        armed = cv
            .wait_timeout(armed, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}
