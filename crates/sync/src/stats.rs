//! What the sync's sink counts: rows, duplicates and rejects, for the progress line and for
//! Prometheus (registered in [`SyncConfig::metrics`] beside the consumer's own
//! `sitemon_sync_batches_total`, `_lost_to_retention_total`, `_leases_held` and
//! `_partition_lag`, see [`sitemon_consume`]).
//!
//! [`SyncConfig::metrics`]: crate::config::SyncConfig::metrics

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sitemon_core::metrics::Registry;

use crate::decode::RejectKind;

/// The label of `sitemon_sync_rejects_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// [`RejectKind::label`]: bounded.
    reason: &'static str,
}

/// What the sync has stored since it started.
#[derive(Debug)]
pub(crate) struct Stats {
    /// `sitemon_sync_events_total`: rows inserted into `website_status`.
    rows: Counter,
    /// `sitemon_sync_duplicates_total`: messages whose `check_id` (or offset) was stored
    /// already.
    duplicates: Counter,
    /// `sitemon_sync_rejects_total`: every reason's series, created at the start so that each
    /// shows (at 0) before it first happens.
    reject_family: Family<ReasonLabel, Counter>,
    /// The counters of `reject_family`, by [`RejectKind::index`].
    rejects: [Counter; RejectKind::ALL.len()],
}

impl Stats {
    pub(crate) fn new() -> Self {
        let reject_family = Family::<ReasonLabel, Counter>::default();
        let rejects = RejectKind::ALL.map(|kind| {
            reject_family.get_or_create_owned(&ReasonLabel {
                reason: kind.label(),
            })
        });
        Self {
            rows: Counter::default(),
            duplicates: Counter::default(),
            reject_family,
            rejects,
        }
    }

    /// Registers the metrics in `metrics`.
    pub(crate) fn register(&self, metrics: &Registry) {
        metrics.register(|registry| {
            registry.register(
                "sitemon_sync_events",
                "Check events stored as rows of website_status",
                self.rows.clone(),
            );
            registry.register(
                "sitemon_sync_duplicates",
                "Messages not stored because their check_id or offset was stored already",
                self.duplicates.clone(),
            );
            registry.register(
                "sitemon_sync_rejects",
                "Messages stored as rows of website_status_rejects, by reason",
                self.reject_family.clone(),
            );
        });
    }

    /// One committed batch: `rejects` counts the rejects inserted, by [`RejectKind::index`].
    pub(crate) fn committed(
        &self,
        rows: u64,
        duplicates: u64,
        rejects: &[u64; RejectKind::ALL.len()],
    ) {
        self.rows.inc_by(rows);
        self.duplicates.inc_by(duplicates);
        for (counter, n) in self.rejects.iter().zip(rejects) {
            counter.inc_by(*n);
        }
    }

    /// `rows=… duplicates=… rejects=…` for the progress line.
    pub(crate) fn progress(&self) -> String {
        let rejects: u64 = self.rejects.iter().map(Counter::get).sum();
        format!(
            "rows={} duplicates={} rejects={rejects}",
            self.rows.get(),
            self.duplicates.get()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Stats;
    use crate::decode::RejectKind;
    use sitemon_core::metrics::Registry;

    /// Every name and label dashboards use: a rename fails here first (the consumer's own
    /// metrics are pinned in `sitemon_consume`).
    #[test]
    fn metrics_keep_their_names_and_labels() {
        let stats = Stats::new();
        let registry = Registry::new();
        stats.register(&registry);
        let text = registry.render();
        let (series, families) = sitemon_testkit::metrics::shapes(&text);
        let golden = [
            "sitemon_sync_duplicates_total{}",
            "sitemon_sync_events_total{}",
            "sitemon_sync_rejects_total{reason}",
        ];
        assert_eq!(series, golden.map(String::from).into(), "{text}");
        let golden = [
            "sitemon_sync_duplicates counter",
            "sitemon_sync_events counter",
            "sitemon_sync_rejects counter",
        ];
        assert_eq!(families, golden.map(String::from).into(), "{text}");
        for kind in RejectKind::ALL {
            let line = format!(
                "sitemon_sync_rejects_total{{reason=\"{}\"}} 0",
                kind.label()
            );
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn counts_what_was_committed() {
        let stats = Stats::new();
        let mut rejects = [0; RejectKind::ALL.len()];
        rejects[RejectKind::NotJson.index()] = 2;
        stats.committed(7, 1, &rejects);
        let registry = Registry::new();
        stats.register(&registry);
        let text = registry.render();
        for line in [
            "sitemon_sync_events_total 7",
            "sitemon_sync_duplicates_total 1",
            "sitemon_sync_rejects_total{reason=\"not_json\"} 2",
            "sitemon_sync_rejects_total{reason=\"tombstone\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(stats.progress(), "rows=7 duplicates=1 rejects=2");
    }
}
