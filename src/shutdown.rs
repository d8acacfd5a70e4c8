//! Process shutdown: SIGINT or SIGTERM cancels one [`CancellationToken`] that every part of the
//! service watches; a second signal exits at once (status 130).
//!
//! The signals are caught from the very start of a service command ([`catch`], called before the
//! configuration is read), so a signal while the service is still starting is a graceful stop
//! too, never the default disposition's kill.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupt).
const FORCED_EXIT: i32 = 130;

/// How often the watcher looks at the flag: the delay between a signal and the cancellation.
const WATCH_EVERY: Duration = Duration::from_millis(20);

/// Set by the first SIGINT or SIGTERM once [`catch`] ran.
static SIGNALLED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Catches SIGINT and SIGTERM from now on (idempotent): the first sets a flag, a second one
/// exits the process at once. Needs no runtime.
pub fn catch() -> Arc<AtomicBool> {
    Arc::clone(SIGNALLED.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // In this order: a signal finding the flag already set exits; the first one sets it.
            let registered = signal_hook::flag::register_conditional_shutdown(
                signal,
                FORCED_EXIT,
                Arc::clone(&flag),
            )
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&flag)));
            if let Err(e) = registered {
                tracing::warn!(error = %e, signal, "cannot catch the signal");
            }
        }
        flag
    }))
}

/// Spawns the signal watcher: the first signal (also one received before, while starting)
/// cancels `token`; a second one exits the process (see [`catch`]). Must be called inside a
/// tokio runtime.
pub fn spawn_signal_handler(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    let flag = catch();
    tokio::spawn(async move {
        let signalled = async {
            while !flag.load(Ordering::SeqCst) {
                tokio::time::sleep(WATCH_EVERY).await;
            }
        };
        tokio::select! {
            () = signalled => {
                tracing::info!("signal received, shutting down (send it again to exit at once)");
                token.cancel();
            }
            () = token.cancelled() => {}
        }
    })
}

/// Sleeps `duration` on a blocking thread, in 50 ms steps, returning early once `stop` is
/// cancelled.
pub fn sleep_unless_cancelled(stop: &CancellationToken, duration: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < duration && !stop.is_cancelled() {
        std::thread::sleep(step);
        slept += step;
    }
}
