//! Dependencies that panic on bad input instead of returning an error (the `tokenizers` crate, 0.23, panics on
//! a syntax error inside a tokenizer.json's `decoder`). [`catch_quietly`] runs such a call under
//! `catch_unwind` and turns a panic into an error message; the panic's report is kept off stderr for that call
//! only, so the user sees one clear error, not a backtrace.

use std::cell::Cell;
use std::panic::{self, UnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a guarded call.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// `f()`, or the message of the panic it raised.
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T + UnwindSafe) -> Result<T, String> {
    install_hook();
    GUARDED.with(|g| g.set(true));
    let result = panic::catch_unwind(f);
    GUARDED.with(|g| g.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// Wraps the process's panic hook (once) so that it stays silent on a thread inside [`catch_quietly`] and
/// reports every other panic as before.
fn install_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message_and_a_value_passes_through() {
        assert_eq!(catch_quietly(|| 4), Ok(4));
        let message = catch_quietly(|| -> u8 { panic!("bad {}", "input") }).unwrap_err();
        assert_eq!(message, "bad input");
        assert_eq!(catch_quietly(|| -> () { std::panic::panic_any(7) }).unwrap_err(), "a panic without a message");
        // The guard is off again: the flag does not leak into later code on this thread.
        assert!(!GUARDED.with(Cell::get));
    }
}
