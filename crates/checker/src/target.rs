//! A site URL taken apart for connecting, and the redirect's `Location` resolved against
//! the URL that sent it.
//!
//! Parsing applies the rules `sitemon add-site` applies
//! ([`validate_url`](sitemon_core::site::validate_url)); resolving a `Location` is
//! [`url::Url::join`] (RFC 3986 section 5.2 as the WHATWG URL standard writes it, the way
//! browsers follow redirects).

use url::Url;

/// A site URL taken apart for connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The URL as given (for the event's `url` and `final_url`).
    pub(crate) url: String,
    pub(crate) https: bool,
    /// The host without IPv6 brackets, for DNS and SNI.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host[:port]` as the URL wrote it, for the `Host` header.
    pub(crate) authority: String,
    /// The origin-form request target: `/path?query`.
    pub(crate) path_and_query: String,
}

impl Target {
    /// Parses an absolute http(s) URL with the same rules `sitemon add-site` applies.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let uri = sitemon_core::site::validate_url(url).map_err(|e| e.to_string())?;
        let https = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let raw_host = uri.host().unwrap_or_default();
        let host = raw_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(raw_host)
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h))
            .unwrap_or(raw_host)
            .to_owned();
        let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(path_and_query) => path_and_query.to_owned(),
        };
        Ok(Self {
            url: url.to_owned(),
            https,
            host,
            port,
            authority,
            path_and_query,
        })
    }

    /// `scheme://authority`, for messages about the connection.
    pub(crate) fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }

    /// Where a redirect from this URL with this `Location` header leads; the fragment is
    /// dropped (it never reaches the server).
    pub(crate) fn redirect(&self, location: &str) -> Result<Self, String> {
        let base = Url::parse(&self.url).map_err(|e| format!("{}: {e}", self.url))?;
        let mut next = base.join(location).map_err(|e| e.to_string())?;
        next.set_fragment(None);
        Self::parse(next.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(url).expect(url)
    }

    #[test]
    fn parses_what_a_connection_needs() {
        let t = target("https://user@Example.com:8443/a/b?q=1");
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (true, "Example.com", 8443)
        );
        assert_eq!(t.authority, "Example.com:8443");
        assert_eq!(t.path_and_query, "/a/b?q=1");
        let t = target("http://[::1]/");
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 80, "[::1]")
        );
        assert_eq!(target("http://example.com").path_and_query, "/");
        assert!(Target::parse("ftp://example.com/").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn resolves_redirect_locations() {
        let base = target("http://a.example:8080/dir/page?x=1");
        let cases = [
            // Absolute, and scheme-relative (the scheme of the base).
            ("https://b.example/new", "https://b.example/new"),
            ("//c.example/p", "http://c.example/p"),
            ("//c.example:81/x?y", "http://c.example:81/x?y"),
            // Absolute paths, with dot segments and a fragment.
            ("/root", "http://a.example:8080/root"),
            ("/a/./b/../c#frag", "http://a.example:8080/a/c"),
            ("/../../above", "http://a.example:8080/above"),
            ("/x/.", "http://a.example:8080/x/"),
            // Relative paths: against the base's directory.
            ("other", "http://a.example:8080/dir/other"),
            ("../up?y=2", "http://a.example:8080/up?y=2"),
            ("../../../up", "http://a.example:8080/up"),
            ("./same/", "http://a.example:8080/dir/same/"),
            ("./", "http://a.example:8080/dir/"),
            ("..", "http://a.example:8080/"),
            // Query only, and nothing: the base's path.
            ("?y=2", "http://a.example:8080/dir/page?y=2"),
            ("?", "http://a.example:8080/dir/page?"),
            ("", "http://a.example:8080/dir/page?x=1"),
            ("#top", "http://a.example:8080/dir/page?x=1"),
            // What servers send that is not quite a reference.
            (" /padded ", "http://a.example:8080/padded"),
            ("/with space", "http://a.example:8080/with%20space"),
        ];
        for (location, expected) in cases {
            let resolved = base.redirect(location).expect(location);
            assert_eq!(resolved.url, expected, "{location:?}");
        }
        let https = target("https://secure.example/a/b");
        assert_eq!(
            https
                .redirect("//other.example/")
                .expect("scheme-relative")
                .url,
            "https://other.example/"
        );
    }

    #[test]
    fn refuses_locations_that_are_not_http_urls() {
        let base = target("http://a.example/dir/page");
        for location in [
            "mailto:x@example.com",
            "ftp://files.example/",
            "http://[::1/",
            "http://exa mple.com/",
            "https://",
            "http://a.example:99999/",
        ] {
            assert!(base.redirect(location).is_err(), "{location:?}");
        }
    }
}
