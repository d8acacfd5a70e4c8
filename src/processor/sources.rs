//! What the processor judges an event by besides the event itself: the risk profiles and the
//! rule sets' versions, followed from their topics.
//!
//! **The rule:** a batch is judged only after both topics were read up to the end offsets they
//! had once the batch was collected. Every profile and rule-set record appended before any
//! record of the batch was appended is then applied, so each record gets the rule set and the
//! risk level in force when it was appended (CONTRACT §4 and §10), live exactly as on a
//! replay. When the catch-up fails or times out (a broker restarting), the batch is not judged:
//! the processor holds it back and reads it again (see `Processor::hold_back`); it never judges
//! by "what was read so far".
//!
//! The rule is a type, not a habit: the profiles and the rule sets can only be read through a
//! [`Judging`] view, and the only way to one is a [`CaughtUp`] proof, which only a successful
//! [`Sources::catch_up`] makes and [`Sources::judging`] consumes (one proof, one batch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::domain::Risk;
use crate::domain::UserId;
use crate::kafka::profiles::ProfilesFollower;
use crate::kafka::KafkaLayerError;
use crate::metrics::Metrics;
use crate::rule_set::timeline::Timeline;
use crate::rule_set::RuleSet;

/// The longest one catch-up attempt may take before its batch is held back, so that a long
/// outage does not keep the loop from serving the consumer group.
const ATTEMPT_AT_MOST: Duration = Duration::from_secs(5);

/// The profiles and rules topics as followed by the processor.
pub(super) struct Sources {
    follower: ProfilesFollower,
    attempt: Duration,
}

/// Proof that the sources were read to their end offsets as of a moment after the batch to
/// judge was collected. Made only by [`Sources::catch_up`]; neither `Clone` nor `Copy`, and
/// consumed by [`Sources::judging`].
#[must_use = "a batch may be judged only with this proof"]
pub(super) struct CaughtUp {
    _private: (),
}

/// The sources as a caught-up batch is judged by them.
pub(super) struct Judging<'a> {
    sources: &'a Sources,
    timeline: &'a Timeline,
}

impl Sources {
    pub(super) fn new(settings: &Settings, timeline: Timeline) -> Result<Self, KafkaLayerError> {
        Ok(Sources {
            follower: ProfilesFollower::with_rules(settings, "profiles", timeline)?,
            attempt: settings.processing.transaction_timeout.min(ATTEMPT_AT_MOST),
        })
    }

    /// Reads both topics to their end offsets as of now (retrying transient failures for up to
    /// one attempt's time), and says how long it took in the metrics.
    pub(super) fn catch_up(&mut self, metrics: &Metrics) -> Result<CaughtUp, KafkaLayerError> {
        let started = Instant::now();
        let result = self.follower.catch_up(self.attempt);
        metrics
            .sources_wait
            .observe(started.elapsed().as_secs_f64());
        result.map(|()| CaughtUp { _private: () })
    }

    /// The view a batch is judged by; takes the proof that it may be.
    pub(super) fn judging(&self, _proof: CaughtUp) -> Judging<'_> {
        Judging {
            sources: self,
            timeline: self.timeline(),
        }
    }

    /// The newest active set: what a restore rebuilds state with (the state does not depend on
    /// the set, so any would do).
    pub(super) fn latest_active(&self) -> Arc<RuleSet> {
        Arc::clone(self.timeline().active.latest())
    }

    fn timeline(&self) -> &Timeline {
        self.follower
            .timeline()
            .expect("made with_rules: the processor's follower always follows the rules topic")
    }
}

impl Judging<'_> {
    /// The active and the shadow set in force for a record appended at `appended` (ms).
    pub(super) fn sets_at(&self, appended: i64) -> (&Arc<RuleSet>, Option<&RuleSet>) {
        (
            self.timeline.active.at(appended),
            self.timeline.shadow.at(appended).as_deref(),
        )
    }

    /// The user's risk level in force for a record appended at `appended` (ms).
    pub(super) fn risk_at(&self, user_id: UserId, appended: i64) -> Risk {
        self.sources.follower.profiles().risk_at(user_id, appended)
    }
}
