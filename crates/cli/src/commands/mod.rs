//! One module per subcommand, each holding its arguments and its `exec`.

pub(crate) mod add_site;
pub(crate) mod alert;
pub(crate) mod alerts;
pub(crate) mod apply;
pub(crate) mod channel;
pub(crate) mod check;
pub(crate) mod export;
pub(crate) mod history;
pub(crate) mod list_sites;
pub(crate) mod maintenance;
pub(crate) mod migrate;
pub(crate) mod remove_site;
pub(crate) mod rollup;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod site_options;
pub(crate) mod status;
pub(crate) mod sync;
pub(crate) mod topic;
pub(crate) mod update_site;
