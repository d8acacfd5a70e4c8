//! Process shutdown: SIGINT or SIGTERM cancels one [`CancellationToken`] that every part of the
//! service watches; a second signal exits at once.

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupt).
const FORCED_EXIT: i32 = 130;

/// Waits for SIGINT or SIGTERM.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM, only SIGINT");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Spawns the signal watcher: the first signal cancels `token`, a second one exits the process
/// immediately. Must be called inside a tokio runtime.
pub fn spawn_signal_handler(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = signal() => {
                tracing::info!("signal received, shutting down (send it again to exit at once)");
                token.cancel();
            }
            _ = token.cancelled() => {}
        }
        signal().await;
        tracing::warn!("second signal, exiting at once");
        std::process::exit(FORCED_EXIT);
    })
}
