//! Liveness and readiness, shared between the processor (writer) and the shim (reader).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Ready = connected to Kafka, joined the group (its first assignment arrived, possibly empty:
/// more instances than partitions), and every assigned partition restored. The processor writes it;
/// HTTP handlers read it without locks.
#[derive(Debug, Default)]
pub struct Readiness {
    connected: AtomicBool,
    joined: AtomicBool,
    assigned: AtomicUsize,
    restoring: AtomicUsize,
    stopped: AtomicBool,
}

/// A point-in-time copy of [`Readiness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub connected: bool,
    pub joined: bool,
    pub assigned_partitions: usize,
    pub restoring_partitions: usize,
    pub stopped: bool,
}

impl Readiness {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The group's first assignment arrived.
    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
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
        let joined = self.joined.load(Ordering::Relaxed);
        ReadinessReport {
            ready: connected && joined && restoring == 0 && !stopped,
            connected,
            joined,
            assigned_partitions: self.assigned.load(Ordering::Relaxed),
            restoring_partitions: restoring,
            stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_connected_joined_and_every_assigned_partition_restored() {
        let readiness = Readiness::default();
        assert!(!readiness.report().ready);
        readiness.set_connected(true);
        assert!(
            !readiness.report().ready,
            "connected, but no assignment yet"
        );
        readiness.set_joined();
        assert!(readiness.report().ready, "an empty assignment is ready");
        readiness.set_partitions(3, 1);
        assert!(!readiness.report().ready);
        readiness.set_partitions(3, 0);
        assert!(readiness.report().ready);
        readiness.set_stopped();
        assert!(!readiness.report().ready);
    }
}
