//! Long-lived tasks that outlive a panic: [`supervise`] runs a task's loop and, when the loop
//! panics, logs the panic, reports it (a metric) and starts the loop again.
//!
//! The task's state lives outside the future it is restarted from (the watcher's map of
//! followed actions and their channels), so a restart keeps whatever the task serves. Only the
//! iteration that panicked is lost.
//!
//! A leaf: it imports nothing of this crate.

use std::{any::Any, future::Future, panic::AssertUnwindSafe, time::Duration};

use futures_util::FutureExt;

/// Runs `start()` until the future it returns ends; when that future panics, logs the panic as
/// `task`'s, calls `on_panic`, waits `restart_after` (so a loop that panics at once does not
/// spin) and runs `start()` again.
///
/// The futures are polled in the caller's task, so dropping the supervisor (at shutdown) drops
/// the loop too.
pub async fn supervise<F, Fut>(
    task: &'static str,
    restart_after: Duration,
    on_panic: impl Fn(),
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        // Unwind safety: what a task shares across restarts must stay usable after a panic
        // (a mutex that recovers from poisoning, channels that stay open), which is the contract
        // of a supervised task.
        match AssertUnwindSafe(start()).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                tracing::error!(
                    task,
                    panic = message(panic.as_ref()),
                    restart_after_ms = restart_after.as_millis() as u64,
                    "a long-lived task panicked; restarting it"
                );
                on_panic();
                tokio::time::sleep(restart_after).await;
            }
        }
    }
}

/// The message a panic was raised with, if it has one.
fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_each_panic_reported() {
        let starts = Arc::new(AtomicUsize::new(0));
        let panics = AtomicUsize::new(0);
        let begin = Instant::now();
        supervise(
            "test",
            Duration::from_secs(1),
            || {
                panics.fetch_add(1, Ordering::SeqCst);
            },
            || {
                let starts = starts.clone();
                async move {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    if n < 2 {
                        panic!("injected panic {n}");
                    }
                }
            },
        )
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 3, "started, restarted twice");
        assert_eq!(panics.load(Ordering::SeqCst), 2);
        assert_eq!(Instant::now() - begin, Duration::from_secs(2));
    }

    #[test]
    fn the_panic_message_is_read_from_either_payload() {
        assert_eq!(message(&"static"), "static");
        assert_eq!(message(&String::from("formatted")), "formatted");
        assert_eq!(message(&42_u8), "(a panic without a message)");
    }
}
