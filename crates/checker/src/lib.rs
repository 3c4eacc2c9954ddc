//! The checker: probes sites on their intervals and publishes one event per check to Kafka.
//!
//! Work in progress: the probe, scheduler and producer land with the checker issue.
