//! `sitemon apply`: makes `websites` what a sites file says, in one transaction.
//!
//! [`plan`] is the pure decision (which site is added, changed with which fields, removed,
//! or left as it is); [`apply`] locks the table against other writers, reads the sites,
//! plans, and carries the plan out in the same transaction, so the plan printed is the one
//! applied. A file's site is matched to a stored one by its `name` when it has one and a
//! stored site has it, otherwise by its URL.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPool;

use crate::db::{SITE_COLUMNS, insert_site_in, update_site_in};
use crate::error::{Error, Result};
use crate::site::{NewSite, Site, SiteSettings};
use crate::sites_file::{Entry, split_at as split};
use crate::statement::bounded;

/// How long one statement of `apply` may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `apply` does to one site.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A site of the file that is not stored.
    Add {
        /// The site.
        site: NewSite,
        /// Where the file has it.
        at: String,
    },
    /// A stored site whose settings differ from the file's.
    Update {
        /// The stored site's id.
        id: i32,
        /// The URL it had.
        url: String,
        /// The settings that change: key, old value, new value (`null` = not set).
        fields: Vec<(String, Value, Value)>,
        /// The site as the file has it.
        site: NewSite,
        /// Where the file has it.
        at: String,
    },
    /// A stored site the file does not have (with `--prune` only).
    Remove {
        /// Its id.
        id: i32,
        /// Its URL.
        url: String,
        /// How many stored checks go with it.
        history: i64,
    },
}

/// Everything `apply` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The sites added, changed and removed, in the file's order, removals last.
    pub changes: Vec<Change>,
    /// Sites of the file stored exactly so.
    pub unchanged: usize,
    /// Stored sites the file does not have, kept because `--prune` was not given.
    pub kept: usize,
}

impl Plan {
    /// Whether applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// (added, changed, removed).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for change in &self.changes {
            match change {
                Change::Add { .. } => counts.0 += 1,
                Change::Update { .. } => counts.1 += 1,
                Change::Remove { .. } => counts.2 += 1,
            }
        }
        counts
    }
}

impl std::fmt::Display for Plan {
    /// One line per site: `+` add, `~` change with the fields that change, `-` remove; then
    /// `=` the count of unchanged sites.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for change in &self.changes {
            match change {
                Change::Add { site, .. } => {
                    write!(f, "+ {}", site.url())?;
                    if let Some(name) = &site.settings().name {
                        write!(f, " (name {name})")?;
                    }
                    writeln!(f)?;
                }
                Change::Update {
                    id, url, fields, ..
                } => {
                    writeln!(f, "~ {url} (site {id}): {}", describe(fields))?;
                }
                Change::Remove { id, url, history } => writeln!(
                    f,
                    "- {url} (site {id}; its {history} stored checks go with it)"
                )?,
            }
        }
        writeln!(f, "= {} unchanged", self.unchanged)?;
        if self.kept > 0 {
            writeln!(
                f,
                "  {} stored sites are not in the file and stay (--prune removes them)",
                self.kept
            )?;
        }
        Ok(())
    }
}

/// Changed settings as people read them: `interval 5 -> 60, method "GET" -> "HEAD"`.
pub fn describe(fields: &[(String, Value, Value)]) -> String {
    let show = |value: &Value| match value {
        Value::Null => "(none)".to_owned(),
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    };
    fields
        .iter()
        .map(|(key, old, new)| format!("{key} {} -> {}", show(old), show(new)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides what makes `stored` what `wanted` says. `history` gives the number of stored
/// checks of a site (asked only of the sites removed).
///
/// # Errors
/// [`Error::SitesFile`] when one stored site is claimed by two entries (one by its name, the
/// other by its URL).
pub fn plan(
    stored: &[Site],
    wanted: &[Entry],
    prune: bool,
    history: &HashMap<i32, i64>,
) -> Result<Plan> {
    let by_name: HashMap<&str, &Site> = stored
        .iter()
        .filter_map(|s| Some((s.settings.name.as_deref()?, s)))
        .collect();
    let by_url: HashMap<&str, &Site> = stored
        .iter()
        .map(|s| (s.settings.url.as_str(), s))
        .collect();
    let mut claimed: HashMap<i32, &str> = HashMap::new();
    let mut plan = Plan::default();
    for entry in wanted {
        let settings = entry.site.settings();
        let found = settings
            .name
            .as_deref()
            .and_then(|name| by_name.get(name))
            .or_else(|| by_url.get(settings.url.as_str()));
        let Some(current) = found else {
            plan.changes.push(Change::Add {
                site: entry.site.clone(),
                at: entry.at.clone(),
            });
            continue;
        };
        if let Some(first) = claimed.insert(current.id, &entry.at) {
            let (path, line, column) = split(&entry.at);
            return Err(Error::SitesFile {
                path,
                line,
                column,
                reason: format!(
                    "this entry and the one at {first} both name stored site {} ({})",
                    current.id, current.settings.url
                ),
            });
        }
        let fields = current.settings.differences(settings);
        if fields.is_empty() {
            plan.unchanged += 1;
        } else {
            plan.changes.push(Change::Update {
                id: current.id,
                url: current.settings.url.clone(),
                fields,
                site: entry.site.clone(),
                at: entry.at.clone(),
            });
        }
    }
    for site in stored {
        if claimed.contains_key(&site.id) {
            continue;
        }
        if prune {
            plan.changes.push(Change::Remove {
                id: site.id,
                url: site.settings.url.clone(),
                history: history.get(&site.id).copied().unwrap_or(0),
            });
        } else {
            plan.kept += 1;
        }
    }
    in_order(stored, &plan)?;
    Ok(plan)
}

/// Refuses a plan whose writes, in the order [`apply`] makes them, would give a URL or a name
/// to a site while another still has it (two sites swapping their URLs, or a site taking the
/// URL of one the file does not have): the table's unique keys would fail the transaction
/// half-way; this says which entry, and why, before anything is written.
fn in_order(stored: &[Site], plan: &Plan) -> Result<()> {
    let keys = |settings: &SiteSettings| {
        let mut keys = vec![("url", settings.url.clone())];
        if let Some(name) = &settings.name {
            keys.push(("name", name.clone()));
        }
        keys
    };
    let mut owned: HashMap<i32, Vec<(&str, String)>> = HashMap::new();
    for site in stored {
        owned.insert(site.id, keys(&site.settings));
    }
    let mut taken: HashMap<(&str, String), i32> = owned
        .iter()
        .flat_map(|(id, keys)| keys.iter().map(move |k| (k.clone(), *id)))
        .collect();
    for change in &plan.changes {
        if let Change::Remove { id, .. } = change {
            for key in owned.remove(id).unwrap_or_default() {
                taken.remove(&key);
            }
        }
    }
    let updates = plan.changes.iter().filter_map(|c| match c {
        Change::Update { id, site, at, .. } => Some((*id, site, at)),
        _ => None,
    });
    let adds = plan.changes.iter().filter_map(|c| match c {
        Change::Add { site, at } => Some((0, site, at)),
        _ => None,
    });
    for (id, site, at) in updates.chain(adds) {
        for key in owned.remove(&id).unwrap_or_default() {
            taken.remove(&key);
        }
        for (what, value) in keys(site.settings()) {
            if let Some(other) = taken.insert((what, value.clone()), id) {
                let (path, line, column) = split(at);
                return Err(Error::SitesFile {
                    path,
                    line,
                    column,
                    reason: format!(
                        "site {}: the {what} {value:?} is still stored site {other}'s when this \
                         site takes it (two sites swapping it, or a site the file does not \
                         have); make the change in two applies",
                        site.url()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Plans and, unless `dry_run`, applies `wanted` in one transaction; returns the plan.
/// Removals go first (a removed site's URL or name may be taken by another), then changes,
/// then additions.
///
/// # Errors
/// What [`plan`] refuses; [`Error::Database`] or [`Error::Timeout`], in which case nothing
/// was written.
pub async fn apply(pool: &PgPool, wanted: &[Entry], prune: bool, dry_run: bool) -> Result<Plan> {
    let mut tx = bounded("starting a transaction", APPLY_TIMEOUT, pool.begin()).await?;
    // Other writers of `websites` wait until the commit; readers (checkers, the sync's
    // FOR KEY SHARE) do not.
    bounded(
        "locking the sites",
        APPLY_TIMEOUT,
        sqlx::query("LOCK TABLE websites IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx),
    )
    .await?;
    let stored: Vec<Site> = bounded(
        "reading the sites",
        APPLY_TIMEOUT,
        sqlx::query_as(&format!("SELECT {SITE_COLUMNS} FROM websites ORDER BY id"))
            .fetch_all(&mut *tx),
    )
    .await?;
    let mut plan = plan(&stored, wanted, prune, &HashMap::new())?;
    for change in &mut plan.changes {
        if let Change::Remove { id, history, .. } = change {
            *history = bounded(
                "counting a site's history",
                APPLY_TIMEOUT,
                sqlx::query_scalar("SELECT count(*) FROM website_status WHERE website_id = $1")
                    .bind(*id)
                    .fetch_one(&mut *tx),
            )
            .await?;
        }
    }
    if dry_run || plan.is_empty() {
        return Ok(plan);
    }
    let removed: Vec<i32> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Remove { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    if !removed.is_empty() {
        bounded(
            "removing sites",
            APPLY_TIMEOUT,
            sqlx::query("DELETE FROM websites WHERE id = ANY($1)")
                .bind(&removed)
                .execute(&mut *tx),
        )
        .await?;
    }
    for change in &plan.changes {
        if let Change::Update { id, site, .. } = change {
            update_site_in(&mut tx, *id, site).await?;
        }
    }
    for change in &plan.changes {
        if let Change::Add { site, .. } = change {
            insert_site_in(&mut tx, site).await?;
        }
    }
    bounded("committing the sites", APPLY_TIMEOUT, tx.commit()).await?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::SiteSettings;
    use crate::sites_file::parse;

    fn stored(id: i32, url: &str, name: Option<&str>, interval: i64) -> Site {
        let mut settings = SiteSettings::new(url);
        settings.name = name.map(str::to_owned);
        settings.interval = interval;
        Site { id, settings }
    }

    fn entries(text: &str) -> Vec<Entry> {
        parse("f.yaml", text, &|_| None).expect("valid")
    }

    #[test]
    fn plans_add_change_remove_and_unchanged() {
        let sites = vec![
            stored(1, "http://a.invalid/", None, 5),
            stored(2, "http://b.invalid/", None, 5),
            stored(3, "http://c.invalid/", Some("c"), 5),
            stored(4, "http://gone.invalid/", None, 5),
        ];
        let file = entries(
            "sites:
  - url: http://a.invalid/
  - url: http://b.invalid/
    interval: 60
    method: HEAD
  - url: http://c-moved.invalid/
    name: c
  - url: http://new.invalid/
",
        );
        let history = HashMap::from([(4, 12)]);
        let kept = plan(&sites, &file, false, &history).expect("plans");
        assert_eq!(kept.unchanged, 1);
        assert_eq!(kept.kept, 1);
        assert_eq!(kept.counts(), (1, 2, 0));
        let pruned = plan(&sites, &file, true, &history).expect("plans");
        assert_eq!(pruned.counts(), (1, 2, 1));
        assert_eq!(
            pruned.to_string(),
            "~ http://b.invalid/ (site 2): interval 5 -> 60, method \"GET\" -> \"HEAD\"
~ http://c.invalid/ (site 3): url \"http://c.invalid/\" -> \"http://c-moved.invalid/\"
+ http://new.invalid/
- http://gone.invalid/ (site 4; its 12 stored checks go with it)
= 1 unchanged
"
        );
        // The file applied: nothing more to do.
        let after = vec![
            stored(1, "http://a.invalid/", None, 5),
            Site {
                id: 2,
                settings: file[1].site.settings().clone(),
            },
            stored(3, "http://c-moved.invalid/", Some("c"), 5),
            stored(5, "http://new.invalid/", None, 5),
        ];
        let again = plan(&after, &file, true, &HashMap::new()).expect("plans");
        assert!(again.is_empty(), "{again}");
        assert_eq!(again.unchanged, 4);
    }

    #[test]
    fn a_swap_of_urls_is_refused_before_anything_is_written() {
        let sites = vec![
            stored(1, "http://a.invalid/", Some("a"), 5),
            stored(2, "http://b.invalid/", Some("b"), 5),
            stored(3, "http://kept.invalid/", None, 5),
        ];
        let swap = entries(
            "sites:
  - url: http://b.invalid/
    name: a
  - url: http://a.invalid/
    name: b
",
        );
        let message = plan(&sites, &swap, false, &HashMap::new())
            .expect_err("a swap")
            .to_string();
        assert!(
            message.starts_with(
                "f.yaml:2:5: site http://b.invalid/: the url \"http://b.invalid/\" is still \
                 stored site 2's"
            ),
            "{message}"
        );
        // Moving a site to a free URL, and then another to the URL it left, is fine.
        let chain = entries(
            "sites:
  - url: http://c.invalid/
    name: b
  - url: http://b.invalid/
    name: a
",
        );
        assert!(plan(&sites, &chain, false, &HashMap::new()).is_ok());
        // The URL of a site the file does not have is refused unless it is pruned.
        let take = entries("sites:\n  - url: http://kept.invalid/\n    name: a\n");
        assert!(plan(&sites, &take, false, &HashMap::new()).is_err());
        let pruned = plan(&sites, &take, true, &HashMap::new()).expect("pruned first");
        assert_eq!(pruned.counts(), (0, 1, 2));
    }

    #[test]
    fn one_stored_site_claimed_twice_is_refused() {
        let sites = vec![stored(1, "http://a.invalid/", Some("a"), 5)];
        let file = entries(
            "sites:
  - url: http://other.invalid/
    name: a
  - url: http://a.invalid/
",
        );
        let message = plan(&sites, &file, false, &HashMap::new())
            .expect_err("claimed twice")
            .to_string();
        assert!(
            message.starts_with("f.yaml:4:5: this entry and the one at f.yaml:2:5 both name"),
            "{message}"
        );
    }
}
