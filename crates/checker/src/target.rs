//! A site URL taken apart for connecting, and the redirect's `Location` resolved against
//! the URL that sent it.
//!
//! Parsing applies the rules `sitemon add-site` applies
//! ([`validate_url`](sitemon_core::site::validate_url)); resolving a `Location` is
//! [`url::Url::join`] (RFC 3986 section 5.2 as the WHATWG URL standard writes it, the way
//! browsers follow redirects).
//!
//! It also holds the rule of what follows a chain of redirects ([`Chain`]): the site's
//! credentials (its `Authorization`, `Proxy-Authorization` and `Cookie` headers, the URL's
//! `user:password@`) and its request body go to the site's own origin only, and only until the
//! chain first leaves it.

use base64::Engine as _;
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
    /// The URL's `user:password@`, ready to send as Basic auth; never taken from a redirect's
    /// `Location` ([`Target::redirect`] leaves it out).
    pub(crate) credentials: Option<Credentials>,
}

/// Where a request goes, for the same-origin rule: scheme, host (ASCII case folded) and port,
/// as RFC 6454 compares origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
}

/// A URL's `user:password@` as the value of an `Authorization: Basic` header: both parts
/// percent-decoded, joined by `:`, in base64 (RFC 7617, as curl sends them). Its `Debug`
/// prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials(String);

impl Credentials {
    /// The credentials a URL's userinfo (`user`, `user:password`) holds; none for an empty one.
    fn from_userinfo(userinfo: &str) -> Option<Self> {
        if userinfo.is_empty() {
            return None;
        }
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let mut plain = percent_encoding::percent_decode_str(user).collect::<Vec<u8>>();
        plain.push(b':');
        plain.extend(percent_encoding::percent_decode_str(password));
        Some(Self(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        )))
    }

    /// `Basic <base64 of user:password>`.
    pub(crate) fn header_value(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// Where a chain of redirects has been, for what may go with its next request.
///
/// The rule (stricter than curl's and Go's client's, which also drop these headers on a
/// redirect elsewhere; README, "Redirects, credentials and a URL's `user:password@`"): the
/// site's credentials and its body go with a request only while every hop
/// of the chain, this one included, has had the site URL's origin (scheme, host and port
/// alike). Once one hop has gone to another origin they never go again in that check, even
/// if a later redirect comes back. An https site redirected to http is another origin (the
/// scheme differs), so nothing secret is ever sent in clear after TLS.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    site: Origin,
    left: bool,
}

impl Chain {
    /// A chain that starts at the site's own URL.
    pub(crate) fn new(site: &Target) -> Self {
        Self {
            site: site.origin_key(),
            left: false,
        }
    }

    /// Whether a request to `hop` would carry the site's credentials and body.
    pub(crate) fn trusts(&self, hop: &Target) -> bool {
        !self.left && hop.origin_key() == self.site
    }

    /// Records a request to `hop`; `true` when it carries the site's credentials and body.
    pub(crate) fn enter(&mut self, hop: &Target) -> bool {
        let trusted = self.trusts(hop);
        self.left |= !trusted;
        trusted
    }
}

impl Target {
    /// Parses an absolute http(s) URL with the same rules `sitemon add-site` applies.
    ///
    /// # Errors
    /// [`sitemon_core::Error::InvalidUrl`] saying what is wrong.
    pub(crate) fn parse(url: &str) -> sitemon_core::Result<Self> {
        let uri = sitemon_core::site::validate_url(url)?;
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
        let (userinfo, authority) = match uri.authority().map(|a| a.as_str()) {
            Some(authority) => authority.rsplit_once('@').unwrap_or(("", authority)),
            None => ("", raw_host),
        };
        let credentials = Credentials::from_userinfo(userinfo);
        let authority = authority.to_owned();
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
            credentials,
        })
    }

    /// The origin of this URL, for [`Chain`].
    pub(crate) fn origin_key(&self) -> Origin {
        Origin {
            https: self.https,
            host: self.host.to_ascii_lowercase(),
            port: self.port,
        }
    }

    /// The URL without its `user:password@`, for messages.
    pub(crate) fn shown(&self) -> String {
        without_userinfo(&self.url)
    }

    /// `scheme://authority`, for messages about the connection (never the userinfo).
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
        let mut next = Self::parse(next.as_str()).map_err(|e| e.to_string())?;
        next.credentials = None;
        Ok(next)
    }
}

/// `url` without its `user:password@` (as it was when it has none, or is no URL), for messages
/// the checker writes itself; the masking of what leaves the checker is `sitemon-core`'s.
pub(crate) fn without_userinfo(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.into()
        }
        _ => url.to_owned(),
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
    fn origins_differ_by_scheme_host_or_port() {
        let origin = |url| target(url).origin_key();
        let site = origin("https://Example.com/a");
        assert_eq!(site, origin("https://example.COM:443/b?c"));
        assert_eq!(site, origin("https://user:pw@example.com/"));
        for other in [
            "http://example.com/a",
            "http://example.com:443/a",
            "https://example.com:8443/a",
            "https://www.example.com/a",
            "https://example.com./a",
        ] {
            assert_ne!(site, origin(other), "{other}");
        }
        assert_eq!(origin("http://[::1]/"), origin("http://[::1]:80/x"));
        assert_ne!(
            origin("http://127.0.0.1:80/"),
            origin("http://127.0.0.2:80/")
        );
    }

    #[test]
    fn a_chain_trusts_the_sites_origin_until_it_first_leaves() {
        let site = target("https://a.example/start");
        let mut chain = Chain::new(&site);
        assert!(chain.enter(&site));
        assert!(chain.enter(&site.redirect("/next").expect("same origin")));
        let other = site.redirect("https://b.example/").expect("another host");
        assert!(!chain.trusts(&other));
        assert!(!chain.enter(&other));
        // Back on the site's origin: still not trusted, the chain has left once.
        let back = other.redirect("https://a.example/back").expect("back");
        assert!(!chain.trusts(&back));
        assert!(!chain.enter(&back));

        // https → http on the same host is another origin.
        let mut chain = Chain::new(&site);
        assert!(chain.enter(&site));
        assert!(!chain.enter(&site.redirect("http://a.example/start").expect("http")));
        // So is another port.
        let mut chain = Chain::new(&site);
        assert!(!chain.enter(&site.redirect("https://a.example:8443/").expect("port")));
    }

    #[test]
    fn userinfo_becomes_basic_credentials_never_the_host() {
        let t = target("http://user:p%40ss@127.0.0.1:8080/x");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path_and_query, "/x");
        // base64("user:p@ss")
        assert_eq!(
            t.credentials.as_ref().map(Credentials::header_value),
            Some("Basic dXNlcjpwQHNz")
        );
        assert_eq!(
            target("http://only-user@h/")
                .credentials
                .as_ref()
                .map(Credentials::header_value),
            Some("Basic b25seS11c2VyOg==")
        );
        assert_eq!(target("http://h/").credentials, None);
        let debug = format!("{:?}", t.credentials);
        assert!(!debug.contains("dXNlcjpwQHNz"), "{debug}");
        assert_eq!(t.shown(), "http://127.0.0.1:8080/x");
        assert_eq!(without_userinfo("not a url"), "not a url");
        // A redirect never carries credentials, not even the base's userinfo that
        // `Url::join` copies into a relative reference.
        assert_eq!(t.redirect("/y").expect("relative").credentials, None);
        assert_eq!(
            t.redirect("http://u:p@other/")
                .expect("absolute")
                .credentials,
            None
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
