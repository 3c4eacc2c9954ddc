//! The process's limit on open file descriptors (`RLIMIT_NOFILE`).
//!
//! Many systems start a process with a soft limit of 1024 and a hard one far above. Each
//! check, Kafka broker, PostgreSQL connection and dashboard client is a descriptor: the
//! soft limit is raised to the hard one at start, which any process may do.

/// Raises the soft limit to the hard one; returns the soft limit in force afterwards
/// (`None` where the platform has no such limit or it cannot be read).
pub(crate) fn raise() -> Option<u64> {
    if !rlimit::Resource::NOFILE.is_supported() {
        return None;
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::debug!("cannot raise the open-file limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// The soft limit in force, if known.
pub(crate) fn current() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}
