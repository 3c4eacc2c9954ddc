//! `sitemon apply`: makes `websites` what a sites file says, in one transaction.
//!
//! [`plan`] is the pure decision (which site is added, changed with which fields, removed,
//! or left as it is); [`apply`] locks the table against other writers, reads the sites,
//! plans, and carries the plan out in the same transaction, so the plan printed is the one
//! applied. A file's site is matched to a stored one by its `name` when it has one and a
//! stored site has it, otherwise by its URL.
//!
//! The plan prints what the file wrote (`${NAME}`), never a variable's value: a setting
//! written with a variable, and a header that carries credentials ([`SECRET_HEADERS`]),
//! print as changed without their values.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPool;

use crate::db::{SITE_COLUMNS, insert_site_in, update_site_in};
use crate::error::{Error, Result};
use crate::site::{Site, SiteSettings};
use crate::sites_file::{Entry, split_at as split};
use crate::statement::bounded;

/// Headers whose values are credentials: the plan says that they changed, never their values,
/// even when the file writes them without a variable.
pub const SECRET_HEADERS: [&str; 3] = ["Authorization", "Proxy-Authorization", "Cookie"];

/// How long one statement of `apply` may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `apply` does to one site.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A site of the file that is not stored.
    Add {
        /// The file's entry: the site, what the file wrote and where.
        entry: Entry,
    },
    /// A stored site whose settings differ from the file's.
    Update {
        /// The stored site's id.
        id: i32,
        /// The URL it had.
        url: String,
        /// The settings that change: key, old value, new value (`null` = not set), the
        /// values expanded (print them with [`Plan`]'s `Display`, which does not show them).
        fields: Vec<(String, Value, Value)>,
        /// The file's entry: the site, what the file wrote and where.
        entry: Entry,
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
    /// `=` the count of unchanged sites. A site of the file prints as the file wrote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for change in &self.changes {
            match change {
                Change::Add { entry } => {
                    write!(f, "+ {}", entry.written.url)?;
                    if let Some(name) = &entry.written.name {
                        write!(f, " (name {name})")?;
                    }
                    writeln!(f)?;
                }
                Change::Update {
                    id, fields, entry, ..
                } => {
                    let url = &entry.written.url;
                    writeln!(f, "~ {url} (site {id}): {}", describe_entry(fields, entry))?;
                }
                // The stored URL may hold what a variable expanded to: masked.
                Change::Remove { id, url, history } => writeln!(
                    f,
                    "- {} (site {id}; its {history} stored checks go with it)",
                    crate::mask::mask_url(url)
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

/// Changed settings as people read them: `interval 5 -> 60, method "GET" -> "HEAD"`; a
/// header is its own item (`header X-Env "a" -> "b"`), and one of [`SECRET_HEADERS`] says
/// only that it was added, removed or changed.
pub fn describe(fields: &[(String, Value, Value)]) -> String {
    describe_with(fields, None)
}

/// [`describe`] for a change a sites file makes: a setting the file writes with a variable
/// prints as changed, with what the file wrote (`${NAME}`) and never the old or new value;
/// anything else is printed with the entry's variables redacted.
fn describe_entry(fields: &[(String, Value, Value)], entry: &Entry) -> String {
    entry.redact(&describe_with(fields, Some(entry)))
}

/// Whether a header's value is a credential the plan never prints.
fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn describe_with(fields: &[(String, Value, Value)], entry: Option<&Entry>) -> String {
    let show = |value: &Value| match value {
        Value::Null => "(none)".to_owned(),
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    };
    let mut items = Vec::new();
    for (key, old, new) in fields {
        // What the file wrote for this setting, when it differs from the expanded value.
        let templated = |written: Option<&str>, expanded: &Value| match (written, expanded) {
            (Some(written), Value::String(value)) if written != value => Some(written.to_owned()),
            _ => None,
        };
        match key.as_str() {
            "headers" => {
                let empty = serde_json::Map::new();
                let old = old.as_object().unwrap_or(&empty);
                let new = new.as_object().unwrap_or(&empty);
                let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
                names.sort();
                names.dedup();
                for name in names {
                    let (before, after) = (old.get(name), new.get(name));
                    if before == after {
                        continue;
                    }
                    let written = after.and_then(|after| {
                        templated(
                            entry.and_then(|e| e.written.headers.get(name).map(String::as_str)),
                            after,
                        )
                    });
                    let hidden = is_secret_header(name) || written.is_some();
                    items.push(match (before, after) {
                        (None, Some(_)) if hidden => match written {
                            Some(written) => format!("header {name} added {written:?}"),
                            None => format!("header {name} added"),
                        },
                        (None, Some(after)) => format!("header {name} added {}", show(after)),
                        (Some(_), None) => format!("header {name} removed"),
                        (Some(_), Some(_)) if hidden => format!("header {name} changed"),
                        (Some(before), Some(after)) => {
                            format!("header {name} {} -> {}", show(before), show(after))
                        }
                        (None, None) => continue,
                    });
                }
            }
            "url" | "body" => {
                let written = entry.and_then(|e| match key.as_str() {
                    "url" => Some(e.written.url.as_str()),
                    _ => e.written.body.as_deref(),
                });
                match templated(written, new) {
                    Some(written) => items.push(format!("{key} changed, now {written:?}")),
                    None => items.push(format!("{key} {} -> {}", show(old), show(new))),
                }
            }
            _ => items.push(format!("{key} {} -> {}", show(old), show(new))),
        }
    }
    items.join(", ")
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
                entry: entry.clone(),
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
                    current.id,
                    entry.redact(&current.settings.url)
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
                entry: entry.clone(),
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
        Change::Update { id, entry, .. } => Some((*id, entry)),
        _ => None,
    });
    let adds = plan.changes.iter().filter_map(|c| match c {
        Change::Add { entry } => Some((0, entry)),
        _ => None,
    });
    for (id, entry) in updates.chain(adds) {
        let (site, at) = (&entry.site, &entry.at);
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
                        "site {}: the {what} {:?} is still stored site {other}'s when this \
                         site takes it (two sites swapping it, or a site the file does not \
                         have); make the change in two applies",
                        entry.written.url,
                        entry.redact(&value)
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
        if let Change::Update { id, entry, .. } = change {
            update_site_in(&mut tx, *id, &entry.site).await?;
        }
    }
    for change in &plan.changes {
        if let Change::Add { entry } = change {
            insert_site_in(&mut tx, &entry.site).await?;
        }
    }
    bounded("committing the sites", APPLY_TIMEOUT, tx.commit()).await?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::SiteSettings;
    use crate::sites_file::{Variables, parse};

    fn stored(id: i32, url: &str, name: Option<&str>, interval: i64) -> Site {
        let mut settings = SiteSettings::new(url);
        settings.name = name.map(str::to_owned);
        settings.interval = interval;
        Site { id, settings }
    }

    fn entries(text: &str) -> Vec<Entry> {
        parse(
            "f.yaml",
            text,
            &Variables::new(["TOKEN"], &|_| None).expect("allowed"),
        )
        .expect("valid")
    }

    #[test]
    fn plans_add_change_remove_and_unchanged() {
        let sites = vec![
            stored(1, "http://a.invalid/", None, 5),
            stored(2, "http://b.invalid/", None, 5),
            stored(3, "http://c.invalid/", Some("c"), 5),
            stored(4, "http://u:pw@gone.invalid/?t=secret", None, 5),
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
~ http://c-moved.invalid/ (site 3): url \"http://c.invalid/\" -> \"http://c-moved.invalid/\"
+ http://new.invalid/
- http://***@gone.invalid/?t=*** (site 4; its 12 stored checks go with it)
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

    #[test]
    fn the_plan_prints_what_the_file_wrote_never_a_value() {
        let text = |cookie: &str, env: &str| {
            format!(
                "sites:
  - url: \"http://a.invalid/?k=${{SITEMON_SITE_TOKEN}}\"
    name: a
    headers:
      X-Token: \"Bearer ${{SITEMON_SITE_TOKEN}}\"
      Authorization: Basic {cookie}
      Cookie: id={cookie}
      X-Env: {env}
  - url: http://b.invalid/
    headers: {{X-Token: \"${{SITEMON_SITE_TOKEN}}\"}}
  - url: http://new.invalid/${{SITEMON_SITE_TOKEN}}
    body: \"{{\\\"t\\\": \\\"${{SITEMON_SITE_TOKEN}}\\\"}}\"
    method: POST
"
            )
        };
        let read = |text: &str, token: &'static str| {
            let lookup = move |name: &str| (name == "SITEMON_SITE_TOKEN").then(|| token.to_owned());
            let vars = Variables::new(Vec::<String>::new(), &lookup).expect("no names");
            parse("f.yaml", text, &vars).expect("valid")
        };
        let before = read(&text("old-cookie", "test"), "old-s3cret");
        let stored: Vec<Site> = before[..2]
            .iter()
            .zip(1..)
            .map(|(entry, id)| Site {
                id,
                settings: entry.site.settings().clone(),
            })
            .collect();
        let after = read(&text("new-cookie", "prod"), "new-s3cret");
        let printed = plan(&stored, &after, false, &HashMap::new())
            .expect("plans")
            .to_string();
        assert_eq!(
            printed,
            "~ http://a.invalid/?k=${SITEMON_SITE_TOKEN} (site 1): header Authorization changed, \
             header Cookie changed, header X-Env \"test\" -> \"prod\", header X-Token changed, \
             url changed, now \"http://a.invalid/?k=${SITEMON_SITE_TOKEN}\"
~ http://b.invalid/ (site 2): header X-Token changed
+ http://new.invalid/${SITEMON_SITE_TOKEN}
= 0 unchanged
"
        );
        for value in ["s3cret", "cookie"] {
            assert!(!printed.contains(value), "{printed}");
        }
        // A literal credential header added prints without its value too; others with theirs.
        let fields = vec![(
            "headers".to_owned(),
            serde_json::json!({}),
            serde_json::json!({"cookie": "id=1", "X-A": "b"}),
        )];
        assert_eq!(
            describe(&fields),
            "header X-A added \"b\", header cookie added"
        );
    }
}
