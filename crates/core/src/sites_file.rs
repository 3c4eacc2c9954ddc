//! Sites as code: a YAML file (or a folder of them) listing sites with every setting, read
//! for `sitemon apply` and written by `sitemon export`.
//!
//! ```yaml
//! sites:
//!   - url: https://example.com/
//!     name: example
//!     interval: 30
//!     headers: {Authorization: "Bearer ${SITEMON_SITE_EXAMPLE_TOKEN}"}
//! ```
//!
//! The keys are the fields of [`SiteSettings`]. `${NAME}` in a `url`, a header value or a
//! `body` is replaced by the environment variable `NAME` (`$${` is a literal `${`), but only
//! a variable the person running `apply` allowed ([`Variables`]): a name that starts with
//! [`SITE_VARIABLE_PREFIX`], or one named with `--env NAME`. sitemon's own settings
//! (`DATABASE_URL`, `KAFKA_*`, `PG*`, `SITEMON_*` outside the prefix) never expand, so a
//! sites file from a pull request cannot send them out through a check. A variable that is
//! not allowed or not set is an error. What a file wrote is kept beside what it expanded
//! to ([`Entry::written`]): the plan and every error show `${NAME}`, never its value.
//! Every error names the file, the line and the column, and the whole file is refused:
//! nothing is applied from a file with one bad entry. JSON is YAML too, so what
//! `export --format json` prints reads back as well.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::error::{Error, Result, excerpt, one_line};
use crate::site::{NewSite, Site, SiteSettings};

/// The largest sites file read, so a wrong path (a log, a dump) fails fast.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// The prefix of the environment variables a sites file may read without `--env`.
pub const SITE_VARIABLE_PREFIX: &str = "SITEMON_SITE_";

/// One site of a file, validated, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The site, its variables expanded: what is stored.
    pub site: NewSite,
    /// The settings as the file writes them, `${NAME}` not expanded: what the plan and the
    /// errors print.
    pub written: SiteSettings,
    /// Where it starts: `FILE:LINE:COLUMN`.
    pub at: String,
    /// The variables the entry expanded, name and value, longest value first: every
    /// message about the entry has these values put back as `${NAME}`.
    expanded: Vec<(String, String)>,
}

impl Entry {
    /// `text` with the value of every variable this entry expanded written back as
    /// `${NAME}`: a message about the entry never holds a variable's value.
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.expanded)
    }

    /// Whether the file writes the URL with a variable.
    pub fn url_has_variables(&self) -> bool {
        self.written.url != self.site.settings().url
    }
}

/// Which environment variables `${NAME}` in a sites file expands, and where their values
/// come from.
pub struct Variables<'a> {
    /// The names allowed besides those that start with [`SITE_VARIABLE_PREFIX`].
    allowed: BTreeSet<String>,
    /// Reads a variable (the process's environment, or a test's map).
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl std::fmt::Debug for Variables<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variables")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl<'a> Variables<'a> {
    /// Variables read with `lookup`: those that start with [`SITE_VARIABLE_PREFIX`] and the
    /// names in `allowed` (`--env NAME`).
    ///
    /// # Errors
    /// [`Error::Config`] (setting `--env`) for a name that is not a variable name, or that
    /// is one of sitemon's own settings ([`reserved`]): those are never expanded.
    pub fn new<I, S>(allowed: I, lookup: &'a dyn Fn(&str) -> Option<String>) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names = BTreeSet::new();
        for name in allowed {
            let name = name.into();
            let refuse = |reason: String| Error::Config {
                setting: "--env",
                reason,
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(refuse(format!(
                    "{:?} is not a variable name (letters, digits and _)",
                    excerpt(&name)
                )));
            }
            if let Some(why) = reserved(&name) {
                return Err(refuse(format!(
                    "{name} is {why}; a sites file never expands sitemon's own settings"
                )));
            }
            names.insert(name);
        }
        Ok(Self {
            allowed: names,
            lookup,
        })
    }

    /// The value of `${name}`, or why it does not expand.
    fn get(&self, name: &str) -> Result<String, Refused> {
        if let Some(why) = reserved(name) {
            return Err(Refused::Reserved(why));
        }
        if !(name.starts_with(SITE_VARIABLE_PREFIX) || self.allowed.contains(name)) {
            return Err(Refused::NotAllowed);
        }
        (self.lookup)(name).ok_or(Refused::NotSet)
    }
}

/// Why `${NAME}` did not expand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// One of sitemon's own settings: what it is.
    Reserved(&'static str),
    /// Neither of the prefix nor named with `--env`.
    NotAllowed,
    /// Allowed, but not in the environment.
    NotSet,
}

/// What `name` is when it is one of sitemon's own connection settings or secrets, which a
/// sites file never expands (not even with `--env`): `DATABASE_URL`, `KAFKA_*`, `PG*` (read
/// by PostgreSQL's tools), `SITEMON_*` except [`SITE_VARIABLE_PREFIX`].
pub fn reserved(name: &str) -> Option<&'static str> {
    if name == "DATABASE_URL" {
        Some("sitemon's database connection setting")
    } else if name.starts_with("KAFKA_") {
        Some("one of sitemon's Kafka connection settings")
    } else if name.starts_with("PG") {
        Some("a PostgreSQL connection setting")
    } else if name.starts_with("SITEMON_") && !name.starts_with(SITE_VARIABLE_PREFIX) {
        Some("one of sitemon's own settings")
    } else {
        None
    }
}

/// `text` with every value of `expanded` (name, value; longest value first) written back
/// as `${NAME}`.
fn redact(text: &str, expanded: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (name, value) in expanded {
        if !value.is_empty() {
            text = text.replace(value.as_str(), &format!("${{{name}}}"));
        }
    }
    text
}

/// A file's shape: one key, `sites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    sites: Vec<Spanned<SiteSettings>>,
}

/// What `export` prints.
#[derive(Debug, Serialize)]
struct ExportFile<'a> {
    sites: Vec<&'a SiteSettings>,
}

/// How `export` writes the sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML, the format people edit.
    Yaml,
    /// JSON, for scripts (and `apply` reads it too).
    Json,
}

/// Reads a sites file, or every `*.yaml`, `*.yml` and `*.json` file of a folder (in name
/// order), and validates every site; `vars` says which `${NAME}` expand, and to what.
///
/// # Errors
/// [`Error::SitesPath`] for a path that cannot be read; [`Error::SitesFile`] naming the file,
/// line and column of the first problem: YAML syntax, an unknown key, a value of the wrong
/// type, a setting that breaks a rule of [`NewSite::from_settings`], a variable that is not
/// allowed or not set, a URL or name given twice.
pub fn load(path: &Path, vars: &Variables<'_>) -> Result<Vec<Entry>> {
    let unreadable = |path: &Path, e: &dyn std::fmt::Display| Error::SitesPath {
        path: path.display().to_string(),
        reason: one_line(&e.to_string()),
    };
    let files = if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| unreadable(path, &e))? {
            let file = entry.map_err(|e| unreadable(path, &e))?.path();
            let sites_file = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if sites_file && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(unreadable(
                path,
                &"the folder holds no .yaml, .yml or .json file",
            ));
        }
        files
    } else {
        vec![path.to_owned()]
    };
    let mut entries = Vec::new();
    for file in &files {
        let size = std::fs::metadata(file)
            .map_err(|e| unreadable(file, &e))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(unreadable(
                file,
                &format!("it is {size} bytes; a sites file is at most {MAX_FILE_BYTES}"),
            ));
        }
        let text = std::fs::read_to_string(file).map_err(|e| unreadable(file, &e))?;
        entries.extend(parse(&file.display().to_string(), &text, vars)?);
    }
    no_twice(&entries)?;
    Ok(entries)
}

/// Reads the sites of one file's text; `label` names the file in errors.
///
/// # Errors
/// As [`load`].
pub fn parse(label: &str, text: &str, vars: &Variables<'_>) -> Result<Vec<Entry>> {
    let at = |line: u64, column: u64, reason: String| Error::SitesFile {
        path: label.to_owned(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(column).unwrap_or(u32::MAX),
        reason,
    };
    let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
        at(line, column, explain(text, line, column, yaml_reason(&e)))
    })?;
    let mut entries = Vec::with_capacity(raw.sites.len());
    for spanned in raw.sites {
        let start = spanned.defined;
        let offset = start
            .span()
            .byte_offset()
            .and_then(|o| usize::try_from(o).ok())
            .unwrap_or(0);
        let locate = |needle: &str| -> (u64, u64) {
            match text.get(offset..).and_then(|rest| rest.find(needle)) {
                Some(found) => line_column(text, offset + found),
                None => (start.line(), start.column()),
            }
        };
        let written = spanned.value;
        let mut settings = written.clone();
        let mut expanded = Vec::new();
        let mut expand = |value: &mut String| -> Result<()> {
            *value = expand_vars(value, &|name| vars.get(name), &mut expanded).map_err(
                |(name, refused)| {
                    let (line, column) = locate(&format!("${{{name}}}"));
                    at(line, column, refused_reason(&name, refused))
                },
            )?;
            Ok(())
        };
        expand(&mut settings.url)?;
        for value in settings.headers.values_mut() {
            expand(value)?;
        }
        if let Some(body) = settings.body.as_mut() {
            expand(body)?;
        }
        expanded.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        expanded.dedup();
        let site = NewSite::from_settings(settings).map_err(|e| {
            let (line, column) = match setting_key(&e) {
                Some(key) => locate(&format!("{key}:")),
                None => (start.line(), start.column()),
            };
            let reason = format!("site {}: {e}", excerpt(&written.url));
            at(line, column, redact(&reason, &expanded))
        })?;
        entries.push(Entry {
            site,
            written,
            at: format!("{label}:{}:{}", start.line(), start.column()),
            expanded,
        });
    }
    no_twice(&entries)?;
    Ok(entries)
}

/// The sites as a file that [`load`] reads back into the same sites.
pub fn render(sites: &[Site], format: Format) -> String {
    // What `parse` expands is escaped, so that a stored `${` reads back as itself.
    let escaped: Vec<SiteSettings> = sites
        .iter()
        .map(|site| {
            let mut settings = site.settings.clone();
            settings.url = escape_vars(&settings.url);
            for value in settings.headers.values_mut() {
                *value = escape_vars(value);
            }
            settings.body = settings.body.as_deref().map(escape_vars);
            settings
        })
        .collect();
    let file = ExportFile {
        sites: escaped.iter().collect(),
    };
    // Both serialise plain strings, numbers, booleans and maps: they cannot fail.
    match format {
        Format::Yaml => serde_saphyr::to_string(&file).unwrap_or_default(),
        Format::Json => {
            let mut json = serde_json::to_string_pretty(&file).unwrap_or_default();
            json.push('\n');
            json
        }
    }
}

/// Why `${name}` is refused, and what to do.
fn refused_reason(name: &str, refused: Refused) -> String {
    match refused {
        Refused::Reserved(why) => format!(
            "${{{name}}} is {why}: a sites file never expands sitemon's own settings, not \
             even with --env"
        ),
        Refused::NotAllowed => format!(
            "${{{name}}} is not allowed in a sites file: only variables named \
             {SITE_VARIABLE_PREFIX}* expand, and those allowed with --env {name}"
        ),
        Refused::NotSet => format!("the environment variable {name} is not set"),
    }
}

/// The key of a sites file an error of [`NewSite::from_settings`] is about.
fn setting_key(error: &Error) -> Option<&'static str> {
    match error {
        Error::InvalidUrl { .. } => Some("url"),
        Error::InvalidInterval { .. } => Some("interval"),
        Error::InvalidRegex { .. } => Some("regex"),
        Error::InvalidSetting { key, .. } => Some(key),
        _ => None,
    }
}

/// The parser's message without its source snippet and location (the caller puts the
/// location first), on one line.
fn yaml_reason(error: &serde_saphyr::Error) -> String {
    let text = one_line(&error.without_snippet().to_string());
    // serde-saphyr ends its messages with " at line L, column C"; ours start with it.
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// The parser's words about a value, with the key the value belongs to: `interval: "five" is
/// not a whole number` rather than `invalid i64`.
fn explain(text: &str, line: u64, column: u64, reason: String) -> String {
    let Some(source) = usize::try_from(line - 1)
        .ok()
        .and_then(|i| text.lines().nth(i))
    else {
        return reason;
    };
    let Some((key, _)) = source.split_once(':') else {
        return reason;
    };
    let key = key.trim().trim_start_matches('-').trim();
    let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !is_key {
        return reason;
    }
    let value: String = source
        .chars()
        .skip(usize::try_from(column).unwrap_or(1).saturating_sub(1))
        .collect();
    let value = value.trim();
    match reason.as_str() {
        "invalid i64" | "invalid u64" | "invalid i32" => {
            format!("{key}: {value:?} is not a whole number")
        }
        "invalid bool" | "invalid boolean" => {
            format!("{key}: {value:?} is neither true nor false")
        }
        _ if reason.contains(key) => reason,
        _ => format!("{key}: {reason}"),
    }
}

/// A URL or a name given to two entries: the second is named, with the first's place.
fn no_twice(entries: &[Entry]) -> Result<()> {
    let mut urls: HashMap<&str, &str> = HashMap::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    for entry in entries {
        let settings = entry.site.settings();
        let twice = |what: &str, value: &String, first: &str| {
            let value = entry.redact(value);
            let (path, line, column) = split_at(&entry.at);
            Error::SitesFile {
                path,
                line,
                column,
                reason: format!(
                    "the {what} {:?} is given twice (first at {first})",
                    excerpt(&value)
                ),
            }
        };
        if let Some(first) = urls.insert(&settings.url, &entry.at) {
            return Err(twice("url", &settings.url, first));
        }
        if let Some(name) = &settings.name {
            if let Some(first) = names.insert(name, &entry.at) {
                return Err(twice("name", name, first));
            }
        }
    }
    Ok(())
}

/// `FILE:LINE:COLUMN` taken apart.
pub(crate) fn split_at(at: &str) -> (String, u32, u32) {
    let mut parts = at.rsplitn(3, ':');
    let column = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
    let line = parts.next().and_then(|l| l.parse().ok()).unwrap_or(1);
    (parts.next().unwrap_or(at).to_owned(), line, column)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (u64, u64) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line as u64, column as u64)
}

/// Replaces every `${NAME}` (NAME of letters, digits and `_`) by `vars(NAME)`, adding name
/// and value to `expanded`; the first variable refused is the error. `$${` is a literal
/// `${`; any other `$` stays.
fn expand_vars(
    text: &str,
    vars: &dyn Fn(&str) -> Result<String, Refused>,
    expanded: &mut Vec<(String, String)>,
) -> Result<String, (String, Refused)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(after) = rest.strip_prefix("${") else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            let name = &after[..name_len];
            let value = vars(name).map_err(|refused| (name.to_owned(), refused))?;
            out.push_str(&value);
            expanded.push((name.to_owned(), value));
            rest = &after[name_len + 1..];
        } else {
            out.push_str("${");
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// What [`expand_vars`] reads back as `text`: every `${` written `$${`.
fn escape_vars(text: &str) -> String {
    text.replace("${", "$${")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SITEMON_SITE_TOKEN" | "TOKEN" | "DATABASE_URL" => Some("s3cret".to_owned()),
            "HOME" => Some("/home/me".to_owned()),
            _ => None,
        }
    }

    fn vars() -> Variables<'static> {
        Variables::new(["TOKEN"], &env).expect("allowed")
    }

    fn error(text: &str) -> String {
        parse("sites.yaml", text, &vars())
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn reads_every_key_and_expands_variables() {
        let text = "sites:
  - url: http://127.0.0.1:9/a
    name: a
    interval: 30
    regex: ok
    regex_must_not_match: maintenance
    method: post
    headers: {Authorization: \"Bearer ${SITEMON_SITE_TOKEN}\", X-Cost: \"$5 ${NOT A VAR}\"}
    body: '{\"q\": 1}'
    expect_status: 200-299, 301
    degraded_after_ms: 800
    timeout_ms: 5000
    follow_redirects: false
    tls_verify: false
  - url: http://127.0.0.1:9/b
";
        let entries = parse("sites.yaml", text, &vars()).expect("valid");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].at, "sites.yaml:2:5");
        let a = entries[0].site.settings();
        assert_eq!(a.name.as_deref(), Some("a"));
        assert_eq!(a.interval, 30);
        assert_eq!(a.method, crate::site::Method::Post);
        assert_eq!(a.headers["Authorization"], "Bearer s3cret");
        assert_eq!(a.headers["X-Cost"], "$5 ${NOT A VAR}");
        assert_eq!(
            entries[0].written.headers["Authorization"],
            "Bearer ${SITEMON_SITE_TOKEN}"
        );
        assert_eq!(
            entries[0].redact("was Bearer s3cret"),
            "was Bearer ${SITEMON_SITE_TOKEN}"
        );
        assert_eq!(a.expect_status.as_deref(), Some("200-299,301"));
        assert_eq!(a.degraded_after_ms, Some(800));
        assert!(!a.follow_redirects && !a.tls_verify);
        let b = entries[1].site.settings();
        assert_eq!(b, &SiteSettings::new("http://127.0.0.1:9/b"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases = [
            (
                "sites:\n  - url: http://a.invalid/\n    intervall: 5\n",
                "sites.yaml:3:5: ",
                "intervall",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n    interval: [1\n",
                "sites.yaml:3:",
                "",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n  - url: http://b.invalid/\n    expect_status: 300-200\n",
                "sites.yaml:4:5: site http://b.invalid/: invalid expect_status \"300-200\"",
                "ends before it starts",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n    headers:\n      X-Token: \"${SITEMON_SITE_MISSING}\"\n",
                "sites.yaml:4:17: ",
                "the environment variable SITEMON_SITE_MISSING is not set",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n    body: \"x ${HOME}\"\n",
                "sites.yaml:3:14: ",
                "${HOME} is not allowed in a sites file: only variables named SITEMON_SITE_* \
                 expand, and those allowed with --env HOME",
            ),
            (
                "sites:\n  - url: https://evil.invalid/?x=${DATABASE_URL}\n",
                "sites.yaml:2:34: ",
                "${DATABASE_URL} is sitemon's database connection setting: a sites file never \
                 expands",
            ),
            (
                "sites:\n  - url: \"http://a.invalid/${SITEMON_SITE_TOKEN}\"\n    interval: 0\n",
                "sites.yaml:3:",
                "site http://a.invalid/${SITEMON_SITE_TOKEN}: invalid interval 0",
            ),
            (
                "sites:\n  - url: \"http://a.invalid/${SITEMON_SITE_TOKEN} x\"\n",
                "sites.yaml:2:",
                "${SITEMON_SITE_TOKEN}",
            ),
            (
                "sites:\n  - url: \"http://a.invalid/${SITEMON_SITE_TOKEN}\"\n  - url: \"http://a.invalid/${TOKEN}\"\n",
                "sites.yaml:3:5: ",
                "the url \"http://a.invalid/${TOKEN}\" is given twice",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n    method: PUT\n",
                "sites.yaml:3:",
                "use GET, HEAD or POST",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n  - url: http://a.invalid/\n",
                "sites.yaml:3:5: ",
                "given twice (first at sites.yaml:2:5)",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n    interval: five\n",
                "sites.yaml:3:15: ",
                "interval: \"five\" is not a whole number",
            ),
            (
                "sites:\n  - url: http://a.invalid/\n    tls_verify: maybe\n",
                "sites.yaml:3:17: ",
                "tls_verify: \"maybe\" is neither true nor false",
            ),
        ];
        for (text, prefix, words) in cases {
            let message = error(text);
            assert!(message.starts_with(prefix), "{text:?}: {message}");
            assert!(message.contains(words), "{text:?}: {message}");
            assert!(!message.contains('\n'), "{text:?}: {message}");
            assert!(!message.contains("s3cret"), "{text:?}: {message}");
            assert!(!message.contains("/home/me"), "{text:?}: {message}");
        }
    }

    #[test]
    fn only_allowed_variables_expand() {
        // The prefix, and names given with --env; nothing else.
        let none = Variables::new(Vec::<String>::new(), &env).expect("no names");
        let text = "sites:\n  - url: \"http://a.invalid/${SITEMON_SITE_TOKEN}\"\n";
        let entries = parse("f", text, &none).expect("the prefix expands");
        assert_eq!(entries[0].site.url(), "http://a.invalid/s3cret");
        assert_eq!(
            entries[0].written.url,
            "http://a.invalid/${SITEMON_SITE_TOKEN}"
        );
        assert!(entries[0].url_has_variables());
        let text = "sites:\n  - url: \"http://a.invalid/${TOKEN}\"\n";
        assert!(parse("f", text, &none).is_err());
        assert!(parse("f", text, &vars()).is_ok());
        // sitemon's own settings, refused by --env with the name and why.
        for name in [
            "DATABASE_URL",
            "KAFKA_SASL_PASSWORD",
            "PGPASSWORD",
            "SITEMON_UI_TOKEN",
            "SITEMON_WEBHOOK_SECRET",
        ] {
            assert!(reserved(name).is_some(), "{name}");
            let message = Variables::new([name], &env)
                .expect_err("refused")
                .to_string();
            assert!(
                message.starts_with(&format!("invalid --env: {name} is ")),
                "{message}"
            );
            assert!(
                message.contains("never expands sitemon's own settings"),
                "{message}"
            );
        }
        for name in [
            "SITEMON_SITE_TOKEN",
            "SITEMON_SITES_TOKEN_X",
            "HOME",
            "TOKEN",
        ] {
            let expected = name == "SITEMON_SITES_TOKEN_X";
            assert_eq!(reserved(name).is_some(), expected, "{name}");
        }
        assert!(Variables::new(["A-B"], &env).is_err());
        assert!(Variables::new([""], &env).is_err());
    }

    #[test]
    fn export_reads_back_as_the_same_sites() {
        let mut full = SiteSettings::new("http://127.0.0.1:9/a");
        full.name = Some("a: b # not a comment".into());
        full.method = crate::site::Method::Post;
        full.headers
            .insert("X-A".into(), "${NOT_A_VARIABLE} $${ ${".into());
        full.body = Some("{\"token\": \"${TOKEN}\"}".into());
        full.expect_status = Some("200-299,301".into());
        full.timeout_ms = Some(1000);
        full.tls_verify = false;
        let sites = vec![
            Site {
                id: 1,
                settings: full,
            },
            Site {
                id: 2,
                settings: SiteSettings::new("http://127.0.0.1:9/b"),
            },
        ];
        for format in [Format::Yaml, Format::Json] {
            let text = render(&sites, format);
            let back = parse("export", &text, &vars()).expect("reads back");
            let back: Vec<&SiteSettings> = back.iter().map(|e| e.site.settings()).collect();
            assert_eq!(back, vec![&sites[0].settings, &sites[1].settings], "{text}");
        }
    }

    #[test]
    fn variables() {
        let vars = vars();
        let get = |name: &str| vars.get(name);
        let mut used = Vec::new();
        let expanded = expand_vars(
            "a ${TOKEN} $ ${ ${} ${TOKEN $${TOKEN} $$x $",
            &get,
            &mut used,
        )
        .expect("set");
        assert_eq!(expanded, "a s3cret $ ${ ${} ${TOKEN ${TOKEN} $$x $");
        assert_eq!(used, vec![("TOKEN".to_owned(), "s3cret".to_owned())]);
        for text in ["${TOKEN}", "$${TOKEN}", "a$", "$${", "${}"] {
            let back = expand_vars(&escape_vars(text), &get, &mut used);
            assert_eq!(back.as_deref(), Ok(text));
        }
        assert_eq!(
            expand_vars("${SITEMON_SITE_NOPE}", &get, &mut used),
            Err(("SITEMON_SITE_NOPE".to_owned(), Refused::NotSet))
        );
        assert_eq!(
            expand_vars("${HOME}", &get, &mut used),
            Err(("HOME".to_owned(), Refused::NotAllowed))
        );
        assert!(matches!(
            expand_vars("${PGPASSWORD}", &get, &mut used),
            Err((_, Refused::Reserved(_)))
        ));
    }
}
