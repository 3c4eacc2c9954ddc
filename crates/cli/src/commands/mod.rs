//! One module per subcommand, each holding its arguments and its `exec`.

pub(crate) mod add_site;
pub(crate) mod alerts;
pub(crate) mod channel;
pub(crate) mod check;
pub(crate) mod list_sites;
pub(crate) mod maintenance;
pub(crate) mod migrate;
pub(crate) mod remove_site;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod sync;
pub(crate) mod topic;
