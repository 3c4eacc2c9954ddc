//! Site URLs as the dashboard shows them: credentials and query values masked unless
//! `--show-full-urls` is given, since a URL may carry a token.

use url::Url;

/// What stands for a masked part.
pub(crate) const MASK: &str = "***";

/// `url` with its user and password replaced by [`MASK`] and every query value too (the
/// names stay: `?token=***&page=***`). Anything but an http(s) URL keeps only what comes
/// after its last `@` (before it, a `***`) up to the first `?` or `#` (after it, a `***`).
pub(crate) fn mask_url(url: &str) -> String {
    let parsed = Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    let Some(mut parsed) = parsed else {
        let cut = url.find(['?', '#']).unwrap_or(url.len());
        let head = &url[..cut];
        let head = match head.rfind('@') {
            Some(at) => {
                let scheme = head.find("://").map_or(0, |i| i + 3);
                format!("{}{MASK}@{}", &head[..scheme], &head[at + 1..])
            }
            None => head.to_owned(),
        };
        return if cut < url.len() {
            format!("{head}?{MASK}")
        } else {
            head
        };
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_password(None);
        let _ = parsed.set_username(MASK);
    }
    if parsed.query().is_some() {
        let names: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if names.is_empty() {
            parsed.set_query(None);
        } else {
            let query = names
                .iter()
                .map(|name| format!("{}={MASK}", url_encode(name)))
                .collect::<Vec<_>>()
                .join("&");
            parsed.set_query(Some(&query));
        }
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(None);
    }
    parsed.to_string()
}

fn url_encode(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes()).collect()
}

/// Shows URLs masked or whole, and masks the URL inside text derived from it (an error
/// message may quote it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Urls {
    pub(crate) show_full: bool,
}

impl Urls {
    pub(crate) fn show(self, url: &str) -> String {
        if self.show_full {
            url.to_owned()
        } else {
            mask_url(url)
        }
    }

    /// `text` with every occurrence of `url` masked.
    pub(crate) fn in_text(self, text: &str, url: &str) -> String {
        if self.show_full || url.is_empty() {
            text.to_owned()
        } else {
            text.replace(url, &mask_url(url))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn credentials_and_query_values_are_masked() {
        assert_eq!(
            mask_url("https://alice:s3cret@example.com/health?token=abc&x=1#frag"),
            "https://***@example.com/health?token=***&x=***"
        );
        assert_eq!(
            mask_url("https://alice@example.com/"),
            "https://***@example.com/"
        );
        assert_eq!(
            mask_url("http://example.com/a?b"),
            "http://example.com/a?b=***"
        );
        assert_eq!(mask_url("http://example.com/"), "http://example.com/");
    }

    #[test]
    fn an_unparseable_url_keeps_only_its_start() {
        assert_eq!(mask_url("not a url?key=v"), "not a url?***");
        assert_eq!(mask_url("ftp://u:p@h/x?y#z"), "ftp://***@h/x?***");
        assert_eq!(mask_url("u:p@host/path"), "***@host/path");
    }
}
