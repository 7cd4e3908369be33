//! How long-running library work reports what it is doing, without printing.
//!
//! Training epochs and attacks over a data set are [`Task`]s of known length; status lines
//! ("resuming RUN after epoch 3", an accuracy as soon as it is measured) are notes. Both go to the
//! [`Progress`] observer the program installs once with [`install`] (the `adp` binary installs
//! progress bars and lines on stderr). Without one, nothing is reported.

use std::sync::OnceLock;

/// An observer of the library's long-running work. Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// Work of `len` steps called `name` begins; it reports its steps to the returned task.
    fn start(&self, len: u64, name: &str) -> Box<dyn Task> {
        let _ = (len, name);
        Box::new(Silent)
    }

    /// One line of status.
    fn note(&self, line: &str) {
        let _ = line;
    }
}

/// One piece of work begun with [`Progress::start`]. Every method has a no-op default.
pub trait Task {
    /// `n` more steps are done.
    fn inc(&self, n: u64) {
        let _ = n;
    }

    /// The task's current state, such as a running loss.
    fn set_message(&self, message: String) {
        let _ = message;
    }

    /// The task is done.
    fn finish(&self) {}
}

/// The observer and task that report nothing.
struct Silent;

impl Progress for Silent {}
impl Task for Silent {}

static OBSERVER: OnceLock<Box<dyn Progress>> = OnceLock::new();

/// Installs the process's observer; only the first call has an effect.
pub fn install(observer: impl Progress + 'static) {
    let _ = OBSERVER.set(Box::new(observer));
}

fn observer() -> &'static dyn Progress {
    OBSERVER.get().map_or(&Silent, |o| o.as_ref())
}

/// Begins a task of `len` steps called `name` on the installed observer.
pub fn start(len: u64, name: &str) -> Box<dyn Task> {
    observer().start(len, name)
}

/// Reports one line of status to the installed observer.
pub fn note(line: &str) {
    observer().note(line);
}
