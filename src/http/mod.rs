//! The HTTP shim (CONTRACT §7): plain HTTP in front of the Kafka topics.
//!
//! - [`routes`]: the endpoints, one file per resource, each with the scope it requires;
//! - [`api`]: their wire types, errors and the OpenAPI document;
//! - [`auth`]: bearer tokens checked against a scope;
//! - [`waiters`]: the pending waiters of `POST` requests ([`waiters::Hub`]);
//! - [`follower`]: the consumer of the alerts topic (from its end) that feeds the hub live;
//! - [`stream`]: the live alert feed (Server-Sent Events) over the store, the hub's recent
//!   responses and its live channel, in cursor order;
//! - the read model behind the GET endpoints is the database of [`crate::store`], fed by its own
//!   projections of the alerts topic and of the triage topic;
//! - [`backend`]: producing events, profiles, rule sets and triage, and fallback lookups in Kafka.
//!
//! Request flow of `POST /event`: decode (400) -> produce to the events topic keyed by user id and
//! wait for Kafka's acknowledgement (503 without) -> the acknowledgement's `(partition, offset)` is
//! the `event_id` -> wait for the alerts record with that `event_id` (200 / 409, or 202 after
//! `http.response_timeout`).

pub mod api;
pub mod auth;
pub mod backend;
pub mod follower;
pub mod routes;
pub mod server;
pub mod stream;
pub mod waiters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, Settings};
use crate::health::Readiness;
use crate::kafka::KafkaLayerError;
use crate::metrics::Metrics;
use crate::store::projection::{Projection, Status as ProjectionStatus};
use crate::store::Store;

pub use backend::{Backend, KafkaBackend};
pub use routes::{router, AppState, ConfiguredRuleSets, Shared};
pub use waiters::Hub;

/// Errors of the shim layer.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Kafka(#[from] KafkaLayerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the alerts follower thread: {0}")]
    Thread(std::io::Error),
    #[error("http.auth.mode is not set: the shim does not serve an open API against a real Kafka cluster. Create a token with `user-monitor token new NAME --scopes events:write,read`, add the printed [[http.auth.tokens]] entry and set http.auth.mode = \"tokens\"; or set http.auth.mode = \"open\" (USER_MONITOR__HTTP__AUTH__MODE=open) to run without authentication")]
    OpenRefused,
    #[error(transparent)]
    Auth(#[from] crate::config::ConfigError),
    #[error("read model store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("configured rule sets: {0}")]
    Rules(crate::config::ConfigError),
}

/// What the shim shares with the rest of the process.
pub struct ShimDeps {
    pub metrics: Arc<Metrics>,
    /// The processor's readiness when it runs in this process; `/readyz` includes it.
    pub processor: Option<Arc<Readiness>>,
    /// Cancelled on SIGINT/SIGTERM: stop accepting, finish in-flight requests, stop.
    pub shutdown: CancellationToken,
    /// Create missing topics at start (`shim` on its own, with `topics.create`).
    pub create_topics: bool,
    /// Empty the read model's database at start (the embedded broker, which keeps nothing).
    pub reset_store: bool,
}

/// A started shim.
pub struct RunningShim {
    /// Where it listens (the real port when `http.listen` has port 0).
    pub addr: SocketAddr,
    /// Ends when the server has shut down.
    pub task: JoinHandle<Result<(), ShimError>>,
}

/// Opens and migrates the read model's database, builds the Kafka clients, starts the alerts
/// follower, the projection and retention, binds `http.listen` and serves until `deps.shutdown`
/// is cancelled. Must be called inside a tokio runtime.
pub async fn start(settings: Settings, deps: ShimDeps) -> Result<RunningShim, ShimError> {
    let auth = match settings.http.auth.mode {
        AuthMode::Unset => return Err(ShimError::OpenRefused),
        AuthMode::Open => {
            tracing::warn!("http.auth.mode = \"open\": the API checks no token");
            None
        }
        AuthMode::Tokens => Some(Arc::new(settings.auth_tokens()?)),
    };
    for (key, set) in [
        (
            "http.read_model_max_records",
            settings.http.read_model_max_records.is_some(),
        ),
        (
            "http.read_model_events_per_user",
            settings.http.read_model_events_per_user.is_some(),
        ),
    ] {
        if set {
            tracing::warn!(
                key,
                "ignoring a removed key: the read model is the [store] database"
            );
        }
    }
    let rules = routes::ConfiguredRuleSets::from_settings(&settings).map_err(ShimError::Rules)?;
    crate::kafka::connect::before_serving(&settings).await?;
    let store = Store::open(&settings.store).await?;
    if deps.reset_store {
        store.reset().await?;
    }
    let settings = Arc::new(settings);
    let backend = Arc::new(KafkaBackend::new(Arc::clone(&settings), store.clone())?);
    let hub = Arc::new(Hub::new(waiters::RECENT));
    // The follower outlives the server's graceful shutdown: in-flight requests still get answers.
    let follower_stop = CancellationToken::new();
    let follower = follower::spawn(
        Arc::clone(&settings),
        Arc::clone(&hub),
        follower_stop.clone(),
    )?;
    let projection_status = Arc::new(ProjectionStatus::with_metrics(&deps.metrics));
    let projection = Projection::spawn(
        Arc::clone(&settings),
        store.clone(),
        Arc::clone(&projection_status),
        follower_stop.clone(),
    )?;
    // The triage topic has a projection of its own (its records are few and must not wait
    // behind a catch-up of the alerts); its numbers go to the same metrics.
    let triage_projection = Projection::spawn_triage(
        Arc::clone(&settings),
        store.clone(),
        Arc::new(ProjectionStatus::counting_rows(&deps.metrics)),
        follower_stop.clone(),
    )?;
    // The users' snapshots, which a user's view replays from.
    let snapshots = Projection::spawn_states(
        Arc::clone(&settings),
        store.clone(),
        Arc::new(ProjectionStatus::default()),
        follower_stop.clone(),
    )?;
    tokio::spawn(crate::store::projection::retain(
        Arc::clone(&settings),
        store.clone(),
        follower_stop.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .map_err(|source| ShimError::Bind {
            addr: settings.http.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ShimError::Serve)?;

    tokio::spawn(wait_for_topics(
        Arc::clone(&settings),
        Arc::clone(&backend),
        deps.create_topics,
        deps.shutdown.clone(),
    ));

    // Feeds end at once on shutdown: an open stream never holds the server's drain.
    let streams = stream::Streams::new(stream::StreamConfig::from_settings(&settings.http));
    tokio::spawn({
        let streams = Arc::clone(&streams);
        let shutdown = deps.shutdown.clone();
        async move {
            shutdown.cancelled().await;
            streams.close();
        }
    });
    let state: AppState = Arc::new(Shared {
        backend: Arc::clone(&backend) as Arc<dyn Backend>,
        hub,
        store: store.clone(),
        projection: projection_status,
        metrics: deps.metrics,
        processor: deps.processor,
        response_timeout: settings.http.response_timeout,
        body_limit: settings.http.body_limit_bytes,
        auth,
        rules,
        streams,
    });
    let app = router(state);
    let limits = server::HttpLimits {
        max_connections: settings.http.max_connections,
        header_read_timeout: settings.http.header_read_timeout,
        body_read_timeout: settings.http.body_read_timeout,
        body_limit: settings.http.body_limit_bytes,
        max_drain_bytes: settings.http.max_drain_bytes,
        shutdown_timeout: settings.processing.shutdown_timeout,
    };
    let shutdown = deps.shutdown.clone();
    tracing::info!(%addr, "http shim listening");
    let task = tokio::spawn(async move {
        let served = server::serve(listener, app, limits, shutdown)
            .await
            .map_err(ShimError::Serve);
        follower_stop.cancel();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = follower.join();
            projection.join();
            triage_projection.join();
            snapshots.join();
            backend.flush(Duration::from_secs(5));
        })
        .await;
        store.close().await;
        tracing::info!("http shim stopped");
        served
    });
    Ok(RunningShim { addr, task })
}

/// Marks the backend ready once the topics exist (creating them first when asked).
async fn wait_for_topics(
    settings: Arc<Settings>,
    backend: Arc<KafkaBackend>,
    create: bool,
    shutdown: CancellationToken,
) {
    if create {
        let settings = Arc::clone(&settings);
        match tokio::task::spawn_blocking(move || crate::kafka::admin::ensure_topics(&settings))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "shim could not ensure topics"),
            Err(e) => tracing::warn!(error = %e, "shim topic check panicked"),
        }
    }
    // Then keep asking: readiness turns red while the brokers are unreachable (requests get a
    // quick 503 instead of waiting for acknowledgements that cannot come) and green when they
    // are back.
    let mut ready = false;
    let mut logged = false;
    while !shutdown.is_cancelled() {
        let check = Arc::clone(&backend);
        let probe = if ready {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        match tokio::task::spawn_blocking(move || check.check_topics(probe)).await {
            Ok(Ok(())) if !ready => {
                tracing::info!("shim producer connected, topics found");
                ready = true;
                logged = false;
            }
            Ok(Ok(())) => {}
            Ok(Err(e)) if ready => {
                tracing::warn!(error = %e, "kafka unreachable: not ready, answering 503 until it is back");
                ready = false;
                logged = true;
            }
            Ok(Err(e)) if !logged => {
                tracing::info!(error = %e, "shim waiting for the topics");
                logged = true;
            }
            _ => {}
        }
        let pause = if ready {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let _ = settings;
}
