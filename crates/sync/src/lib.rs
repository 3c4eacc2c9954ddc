//! The sync: consumes check events from Kafka into PostgreSQL, exactly once.
//!
//! Work in progress: the consumer and writer land with the sync issue.
