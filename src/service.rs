//! The long-running commands: `user-monitor process` (the stream processor alone), `run`
//! (processor + shim in one process, on an embedded broker when `kafka.bootstrap_servers` is
//! empty) and `shim` (the HTTP shim alone), on one `lifecycle`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::embedded::{self, EmbeddedBroker, EmbeddedError};
use crate::health::Readiness;
use crate::http::{self, ShimDeps, ShimError};
use crate::metrics::Metrics;
use crate::processor::{self, ProcessorError};

/// Errors of the service commands.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0} panicked")]
    Panicked(&'static str),
    #[error("graceful shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

/// What every long-running command shares: an async runtime, SIGINT/SIGTERM turned into one
/// cancellation, the command's body, then a bounded shutdown of the runtime's leftover tasks.
fn lifecycle<T, F>(body: impl FnOnce(CancellationToken) -> F) -> Result<T, ServiceError>
where
    F: std::future::Future<Output = Result<T, ServiceError>>,
{
    let runtime = tokio::runtime::Runtime::new().map_err(ServiceError::Runtime)?;
    let shutdown = CancellationToken::new();
    let result = runtime.block_on(async {
        crate::shutdown::spawn_signal_handler(shutdown.clone());
        body(shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `user-monitor process`: the stream processor until SIGINT/SIGTERM (or until it stops by
/// itself, e.g. fenced), its graceful shutdown bounded by `processing.shutdown_timeout`.
pub fn process(settings: Settings) -> Result<(), ServiceError> {
    crate::telemetry::init(&settings.log);
    let deadline = settings.processing.shutdown_timeout;
    lifecycle(|shutdown| async move {
        let deps = processor::Deps {
            metrics: Metrics::new(),
            readiness: Arc::new(Readiness::default()),
            shutdown: shutdown.clone(),
        };
        let worker = tokio::task::spawn_blocking(move || {
            let startup = processor::prepare(&settings, false)?;
            processor::run(settings, startup, deps)
        });
        tokio::pin!(worker);
        let joined = tokio::select! {
            joined = &mut worker => joined,
            () = async { shutdown.cancelled().await; tokio::time::sleep(deadline).await } => {
                return Err(ServiceError::ShutdownTimeout(deadline));
            }
        };
        joined.map_err(|_| ServiceError::Panicked("processor"))??;
        tracing::info!("processor stopped");
        Ok(())
    })
}

/// `user-monitor run`: the processor and the shim until SIGINT/SIGTERM (or until the processor
/// stops by itself, e.g. fenced). Without `kafka.bootstrap_servers`, starts the embedded broker
/// first and prints where to send events.
pub fn run(mut settings: Settings) -> Result<(), ServiceError> {
    crate::telemetry::init(&settings.log);
    // The broker must outlive every client: it is declared first, so it is dropped last.
    let broker = if settings.kafka.bootstrap_servers.trim().is_empty() {
        let broker = EmbeddedBroker::start(&settings)?;
        let notes = broker.configure(&mut settings);
        Some((broker, notes))
    } else {
        None
    };
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::default());
    let deadline = settings.processing.shutdown_timeout;
    // Borrowed by the body: the broker outlives the runtime.
    let (settings, embedded) = (&settings, broker.as_ref());
    let result = lifecycle(|shutdown| async move {
        let shim = http::start(
            settings.clone(),
            ShimDeps {
                metrics: Arc::clone(&metrics),
                processor: Some(Arc::clone(&readiness)),
                shutdown: shutdown.clone(),
                create_topics: false,
                // The embedded broker keeps nothing, so neither does the read model on it.
                reset_store: embedded.is_some(),
            },
        )
        .await?;
        if let Some((broker, notes)) = embedded {
            eprintln!(
                "{}",
                embedded::banner(&broker.bootstrap_servers(), shim.addr, notes)
            );
        }
        // The processor stops after the shim: requests in flight at a signal still get their
        // responses (the shim drains them first), then the processor commits and leaves.
        let stop_processor = CancellationToken::new();
        let deps = processor::Deps {
            metrics,
            readiness,
            shutdown: stop_processor.clone(),
        };
        let processor_settings = settings.clone();
        let on_embedded = embedded.is_some();
        let worker = tokio::task::spawn_blocking(move || {
            let startup = processor::prepare(&processor_settings, on_embedded)?;
            processor::run(processor_settings, startup, deps)
        });
        tokio::pin!(worker);
        let shim_task = shim.task;
        tokio::pin!(shim_task);
        let (processed, served) = tokio::select! {
            joined = &mut worker => {
                // The processor stopped by itself: take the shim down too.
                shutdown.cancel();
                let served = tokio::time::timeout(deadline, &mut shim_task).await;
                (joined, served)
            }
            () = shutdown.cancelled() => {
                let started = tokio::time::Instant::now();
                let served = tokio::time::timeout(deadline, &mut shim_task).await;
                stop_processor.cancel();
                let left = deadline.saturating_sub(started.elapsed());
                match tokio::time::timeout(left.max(Duration::from_secs(1)), &mut worker).await {
                    Ok(joined) => (joined, served),
                    Err(_) => return Err(ServiceError::ShutdownTimeout(deadline)),
                }
            }
        };
        let served = match served {
            Ok(Ok(served)) => served,
            Ok(Err(_)) => return Err(ServiceError::Panicked("http shim")),
            Err(_) => return Err(ServiceError::ShutdownTimeout(deadline)),
        };
        processed.map_err(|_| ServiceError::Panicked("processor"))??;
        served?;
        Ok(())
    });
    drop(broker);
    result
}

/// `user-monitor shim`: the HTTP shim alone, against `kafka.bootstrap_servers`. Creates missing
/// topics when `topics.create` is set. Ready when its own Kafka clients are connected, its database
/// open and its projection assigned.
pub fn shim(settings: Settings) -> Result<(), ServiceError> {
    crate::telemetry::init(&settings.log);
    lifecycle(|shutdown| async move {
        let create_topics = settings.topics.create;
        let shim = http::start(
            settings,
            ShimDeps {
                metrics: Metrics::new(),
                processor: None,
                shutdown: shutdown.clone(),
                create_topics,
                reset_store: false,
            },
        )
        .await?;
        match shim.task.await {
            Ok(served) => Ok(served?),
            Err(_) => Err(ServiceError::Panicked("http shim")),
        }
    })
}
