//! Liveness and readiness, shared between the processor (writer) and the shim (reader).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Ready = connected to Kafka, and every assigned partition restored. The processor writes it;
/// HTTP handlers read it without locks.
#[derive(Debug, Default)]
pub struct Readiness {
    connected: AtomicBool,
    assigned: AtomicUsize,
    restoring: AtomicUsize,
    stopped: AtomicBool,
}

/// A point-in-time copy of [`Readiness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub connected: bool,
    pub assigned_partitions: usize,
    pub restoring_partitions: usize,
    pub stopped: bool,
}

impl Readiness {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn set_partitions(&self, assigned: usize, restoring: usize) {
        self.assigned.store(assigned, Ordering::Relaxed);
        self.restoring.store(restoring, Ordering::Relaxed);
    }

    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn report(&self) -> ReadinessReport {
        let connected = self.connected.load(Ordering::Relaxed);
        let restoring = self.restoring.load(Ordering::Relaxed);
        let stopped = self.stopped.load(Ordering::Relaxed);
        ReadinessReport {
            ready: connected && restoring == 0 && !stopped,
            connected,
            assigned_partitions: self.assigned.load(Ordering::Relaxed),
            restoring_partitions: restoring,
            stopped,
        }
    }
}
