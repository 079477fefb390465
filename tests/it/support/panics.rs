//! Panics inside the proxy's own tasks: tokio catches them (the task dies alone), so a test
//! that must prove "no panic" counts them with a process-wide hook. Tests that want this run
//! the proxy on a runtime whose threads carry a name prefix; only panics on such threads count.

use std::sync::{Mutex, Once};

static INSTALL: Once = Once::new();
static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Thread-name prefix for runtimes whose panics are counted.
pub const PREFIX: &str = "counted-";

/// Install the counting hook (once; the previous hook still runs, so messages still print).
pub fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                if name.starts_with(PREFIX) {
                    SEEN.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name.to_string(), info.to_string()));
                }
            }
            previous(info);
        }));
    });
}

/// A multi-thread runtime whose panics are counted under `PREFIX` + `name`.
pub fn runtime(name: &str) -> tokio::runtime::Runtime {
    install();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{PREFIX}{name}"))
        .enable_all()
        .build()
        .unwrap()
}

/// The panics seen on threads of the runtime `name`.
pub fn seen(name: &str) -> Vec<String> {
    let prefix = format!("{PREFIX}{name}");
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(thread, _)| thread == &prefix)
        .map(|(_, msg)| msg.clone())
        .collect()
}
